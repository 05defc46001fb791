-- Row-level security: a station's login writes only rows of its own station ids, and opens only the months it
-- needs. Each station login gets its own policy on parts, named "station <login>", made by
-- `station fleet add-station LOGIN --station-id ID` or `station fleet init --station-user LOGIN=ID` (central.py);
-- a login in fleet_station without one may insert nothing (row-level security denies by default). The owner of
-- parts (the admin who ran `fleet init`) and superusers are not limited.
ALTER TABLE parts ENABLE ROW LEVEL SECURITY;

-- QA reads every station's rows (with row-level security on, a role without a policy would see none)
CREATE POLICY fleet_qa_reads ON parts FOR SELECT TO fleet_qa USING (true);

-- How far from the server's clock a station may open a month of parts. One row; change it with
-- `station fleet init --months-back N` or UPDATE fleet_settings (as the admin).
CREATE TABLE fleet_settings (
    one_row             boolean  PRIMARY KEY DEFAULT true CHECK (one_row),
    station_months_back integer  NOT NULL DEFAULT 12 CHECK (station_months_back >= 0),  -- whole months before now
    station_ahead       interval NOT NULL DEFAULT '1 day' CHECK (station_ahead >= interval '0')  -- clock skew
);
INSERT INTO fleet_settings DEFAULT VALUES;
REVOKE ALL ON fleet_settings FROM PUBLIC;
GRANT SELECT ON fleet_settings TO fleet_qa;

-- fleet_ensure_month as in 001, but a caller that is neither the owner of parts nor a superuser may create only a
-- month from fleet_settings.station_months_back months ago up to now + station_ahead (a month that exists is
-- returned to anyone who may call it). session_user is the login: inside SECURITY DEFINER, current_user is the
-- owner. A refused month raises insufficient_privilege with a hint; the rows wait in the station's ledger.
CREATE OR REPLACE FUNCTION fleet_ensure_month(at timestamptz) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    first date := date_trunc('month', at AT TIME ZONE 'UTC')::date;
    name text := format('parts_%s', to_char(first, 'YYYY_MM'));
    low timestamptz := first::timestamp AT TIME ZONE 'UTC';
    high timestamptz := (first + interval '1 month')::timestamp AT TIME ZONE 'UTC';
    limits fleet_settings;
    oldest date;
BEGIN
    IF to_regclass(name) IS NOT NULL THEN
        RETURN name;
    END IF;
    IF NOT pg_has_role(session_user, (SELECT relowner FROM pg_class WHERE oid = 'parts'::regclass), 'USAGE') THEN
        SELECT * INTO limits FROM fleet_settings;
        oldest := (date_trunc('month', now() AT TIME ZONE 'UTC') - make_interval(months => limits.station_months_back))::date;
        IF at > now() + limits.station_ahead THEN
            RAISE EXCEPTION 'a station may not open month % of parts: its row time % is more than % ahead of the server clock', to_char(first, 'YYYY-MM'), at, limits.station_ahead
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'check the station''s clock; if the month is right, an admin creates it: SELECT fleet_ensure_month(''' || first || ''')';
        END IF;
        IF first < oldest THEN
            RAISE EXCEPTION 'a station may not open month % of parts: stations open months from % on (fleet_settings.station_months_back = %)', to_char(first, 'YYYY-MM'), to_char(oldest, 'YYYY-MM'), limits.station_months_back
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'an admin creates it: SELECT fleet_ensure_month(''' || first || '''), or allows older months: station fleet init --months-back N';
        END IF;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('fleet_ensure_month'));
    BEGIN  -- another station may have created it while this one waited for the lock
        EXECUTE format('CREATE TABLE %I (LIKE parts INCLUDING DEFAULTS INCLUDING CONSTRAINTS, '
                       'CONSTRAINT %I CHECK (time_utc >= %L AND time_utc < %L))', name, name || '_month', low, high);
    EXCEPTION WHEN duplicate_table THEN
        RETURN name;
    END;
    EXECUTE format('ALTER TABLE parts ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', name, low, high);
    RETURN name;
END $$;
