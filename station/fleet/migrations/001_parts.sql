-- The fleet's record: one row per ledger row of every station, partitioned by month of time_utc.
-- A row is known by (station_id, run_id, row_id); time_utc is part of the key because a unique index on a
-- partitioned table must hold the partition key (a resent row has the same time_utc, so it still conflicts).
CREATE TABLE parts (
    station_id       text             NOT NULL,  -- [station] id of the station that wrote the row
    run_id           text             NOT NULL,  -- the `station run` that wrote it ('' for rows older than schema 3)
    row_id           bigint           NOT NULL,  -- the row's id in the station's ledger
    time_utc         timestamptz      NOT NULL,  -- when the station logged it (ms)
    timestamp_ns     bigint           NOT NULL,  -- the frame's host monotonic timestamp (gap: its start)
    source           text             NOT NULL,
    frame_id         bigint           NOT NULL,
    file             text,
    verdict          text             NOT NULL CHECK (verdict IN ('PASS', 'FAIL', 'NOT_INSPECTED', 'GAP')),
    defects_json     text             NOT NULL,  -- as the station wrote it (defects_json::jsonb to query it)
    labels_json      text             NOT NULL,
    defect_classes   text[]           NOT NULL DEFAULT '{}',  -- defect labels and classifier labels of the row
    engine_id        text             NOT NULL,
    latency_ms       double precision NOT NULL,
    image_path       text,                       -- on the station, relative to its ledger's folder
    image_size       bigint,                     -- bytes (NULL: the file was not there when forwarded)
    image_sha256     text,
    image_copy       text,                       -- where `station forward --images DIR` copied it
    overlay_path     text,
    overlay_size     bigint,
    overlay_sha256   text,
    recipe           text,
    calibration      text,
    reason           text,
    detail           text,
    frame_count      integer          NOT NULL DEFAULT 1,
    last_frame_id    bigint,
    end_timestamp_ns bigint,
    rejected         smallint,
    camera_timestamp_ns bigint,                  -- the camera's own timestamp, from ledgers of schema 4 on
    forwarded_utc    timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (station_id, run_id, row_id, time_utc)
) PARTITION BY RANGE (time_utc);

CREATE INDEX parts_time ON parts (time_utc);
CREATE INDEX parts_station_time ON parts (station_id, time_utc);
CREATE INDEX parts_verdict_time ON parts (verdict, time_utc);
CREATE INDEX parts_classes ON parts USING gin (defect_classes);

-- The monthly partition holding `at` (UTC months), created when missing. SECURITY DEFINER: the station role,
-- which may only INSERT, calls it before forwarding a batch of a month it has not seen yet. The month is built as
-- its own table and then attached: ATTACH PARTITION takes a SHARE UPDATE EXCLUSIVE lock on parts, which lets other
-- stations insert and QA read meanwhile (CREATE TABLE ... PARTITION OF would wait for, and then block, both).
CREATE FUNCTION fleet_ensure_month(at timestamptz) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    first date := date_trunc('month', at AT TIME ZONE 'UTC')::date;
    name text := format('parts_%s', to_char(first, 'YYYY_MM'));
    low timestamptz := first::timestamp AT TIME ZONE 'UTC';
    high timestamptz := (first + interval '1 month')::timestamp AT TIME ZONE 'UTC';
BEGIN
    IF to_regclass(name) IS NULL THEN
        PERFORM pg_advisory_xact_lock(hashtext('fleet_ensure_month'));
        BEGIN  -- another station may have created it while this one waited for the lock
            EXECUTE format('CREATE TABLE %I (LIKE parts INCLUDING DEFAULTS INCLUDING CONSTRAINTS, '
                           'CONSTRAINT %I CHECK (time_utc >= %L AND time_utc < %L))', name, name || '_month', low,
                           high);
        EXCEPTION WHEN duplicate_table THEN
            RETURN name;
        END;
        EXECUTE format('ALTER TABLE parts ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', name, low, high);
    END IF;
    RETURN name;
END $$;
REVOKE ALL ON FUNCTION fleet_ensure_month(timestamptz) FROM PUBLIC;

SELECT fleet_ensure_month(now());
