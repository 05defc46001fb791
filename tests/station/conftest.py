"""Fixtures of the station tests: one real PostgreSQL server per session for the fleet tests (test_fleet*.py)."""
from __future__ import annotations

import pytest

from tests.station.pg_util import PgServer, create_fleet, start_server


@pytest.fixture(scope="session")
def pg() -> PgServer:
    """A real PostgreSQL server (tests/station/pg_util.py), started on first use; skips when there is none."""
    server = start_server()
    yield server
    server.remove()


@pytest.fixture
def fleet(pg: PgServer) -> str:
    """A fresh fleet database (schema applied, the login fleet_test_line writing the stations line-*, the QA login
    fleet_test_qa); returns its name."""
    return create_fleet(pg)
