-- Who each part is, from ledgers of schema 5 on (the station's PartIdentity): the PLC's PartId (else the source's
-- part id: a replayed file's name, a camera's chunk value, a line-scan part's index), MeasId and ProductId, and the
-- OPC UA job the part answered. NULL in rows forwarded before, and where nobody said.
-- Adding nullable columns without a default changes only the catalog (no partition is rewritten); each month of
-- parts, attached or created later (fleet_ensure_month: LIKE parts), has them too.
ALTER TABLE parts ADD COLUMN part_id text, ADD COLUMN meas_id text, ADD COLUMN product_id text, ADD COLUMN job_id text;

-- QA looks parts up by serial and by measurement (station export --part-id / --meas-id); an index on the
-- partitioned table is built on every month, and on each month attached later.
CREATE INDEX parts_part_id ON parts (part_id) WHERE part_id IS NOT NULL;
CREATE INDEX parts_meas_id ON parts (meas_id) WHERE meas_id IS NOT NULL;
