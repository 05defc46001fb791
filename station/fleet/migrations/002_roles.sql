-- Two group roles: stations may only add rows, QA may only read. Login roles join them
-- (`station fleet init --station-user NAME --qa-user NAME`, or GRANT fleet_station TO name).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'fleet_station') THEN
        CREATE ROLE fleet_station NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'fleet_qa') THEN
        CREATE ROLE fleet_qa NOLOGIN;
    END IF;
END $$;

REVOKE ALL ON parts, schema_migrations FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO fleet_station, fleet_qa;
-- INSERT ... ON CONFLICT DO NOTHING needs INSERT only (no SELECT): a station cannot read nor change the record
GRANT INSERT ON parts TO fleet_station;
GRANT EXECUTE ON FUNCTION fleet_ensure_month(timestamptz) TO fleet_station;
GRANT SELECT ON parts, schema_migrations TO fleet_qa;
