-- QA's reviews (`station review`, ledger schema 6), forwarded after the parts they name. A review is known by
-- (station_id, review_id), review_id being the id of the review in the station's ledger; it names its part by the
-- part's key in parts (station_id, run_id, row_id and the part's time_utc, which the key of a partitioned table
-- must hold). Append-only, as in the ledger: a later review of the same part is one more row, the latest counts.
CREATE TABLE reviews (
    station_id    text        NOT NULL,  -- [station] id of the station whose ledger holds the review
    review_id     bigint      NOT NULL,  -- the review's id in that ledger (reviews.id)
    run_id        text        NOT NULL,  -- the part reviewed: its run ('' for rows older than ledger schema 3),
    row_id        bigint      NOT NULL,  --   its id in the ledger (reviews.inspection_id)
    row_time_utc  timestamptz NOT NULL,  --   and when the station logged it (parts.time_utc)
    time_utc      timestamptz NOT NULL,  -- when the review was recorded
    reviewer      text        NOT NULL,
    mark          text        NOT NULL CHECK (mark IN ('good', 'defect')),
    note          text,
    forwarded_utc timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (station_id, review_id),
    FOREIGN KEY (station_id, run_id, row_id, row_time_utc) REFERENCES parts (station_id, run_id, row_id, time_utc)
);
CREATE INDEX reviews_part ON reviews (station_id, run_id, row_id);

-- Never changed nor deleted, by anyone (the grants below already keep stations and QA to INSERT and SELECT).
CREATE FUNCTION fleet_reviews_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'reviews are append-only: record a new review instead' USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER reviews_append_only BEFORE UPDATE OR DELETE ON reviews
    FOR EACH ROW EXECUTE FUNCTION fleet_reviews_append_only();
CREATE TRIGGER reviews_no_truncate BEFORE TRUNCATE ON reviews
    FOR EACH STATEMENT EXECUTE FUNCTION fleet_reviews_append_only();

REVOKE ALL ON reviews FROM PUBLIC;
GRANT INSERT ON reviews TO fleet_station;  -- INSERT ... ON CONFLICT DO NOTHING, as for parts
GRANT SELECT ON reviews TO fleet_qa;

-- Row-level security as for parts (003): each station login inserts only the reviews of its own station ids,
-- under a policy named as its policy on parts ("station <login>"; station fleet add-station makes both). The
-- logins that have one on parts now get the same condition on reviews.
ALTER TABLE reviews ENABLE ROW LEVEL SECURITY;
CREATE POLICY fleet_qa_reads ON reviews FOR SELECT TO fleet_qa USING (true);
DO $$
DECLARE
    p record;
BEGIN
    FOR p IN SELECT policyname, roles, with_check FROM pg_policies
             WHERE schemaname = current_schema() AND tablename = 'parts' AND policyname LIKE 'station %'
                   AND with_check IS NOT NULL
    LOOP
        EXECUTE format('CREATE POLICY %I ON reviews FOR ALL TO %s USING (%s) WITH CHECK (%s)', p.policyname,
                       (SELECT string_agg(quote_ident(r), ', ') FROM unnest(p.roles) AS r), p.with_check,
                       p.with_check);
    END LOOP;
END $$;
