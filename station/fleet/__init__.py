"""The fleet: many stations' ledgers forwarded to one PostgreSQL database (docs/FLEET.md)."""
