"""Prometheus metrics, scraped over HTTP: the parts counters equal the ledger's rows, frames and stage times come
from the running line, other integrations' lag is exported, and a busy port never stops the line."""
from __future__ import annotations

import json
import re
import socket
import sqlite3
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from inspection_core.records import FrameGap, GapKind
from station.errors import RecipeError, StationError
from station.integrations import Context, start_all
from station.metrics import from_table, parse_table
from station.recipe import TableReader
from station.rejectlog import RejectLog
from tests.station.test_mqtt import STATION, free_port, inspector, make_line, publisher, recipe, wait_until

__all__ = ["inspector", "recipe"]  # fixtures shared with the MQTT tests


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """``/metrics`` as ``{(sample name, sorted labels): value}``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def metrics_server(recipe, db, listen="127.0.0.1:0"):
    return from_table(TableReader({"listen": listen}, "test.toml", "metrics", db.parent),
                      Context(recipe, db, STATION, "run-1"))


@pytest.mark.parametrize("table, message", [
    ({}, r'r.toml: \[metrics\] listen: missing; add listen = HOST:PORT, e.g. "127.0.0.1:9400"'),
    ({"listen": "9400"}, "listen: '9400' is not allowed; use HOST:PORT"),
    ({"listen": "::1:9400"}, r"use HOST:PORT.*\[::1\]:9400"),
    ({"listen": "host:http"}, "is not allowed"),
    ({"listen": "127.0.0.1:9400", "port": 1}, "port: unknown key; known keys: listen"),
])
def test_the_table_is_checked_with_a_message_that_says_what_to_fix(table, message):
    with pytest.raises(RecipeError, match=message):
        parse_table(TableReader(table, "r.toml", "metrics", Path(".")))


def test_listen_takes_ipv4_ipv6_and_any_port():
    def parse(listen: str):
        return parse_table(TableReader({"listen": listen}, "w", "metrics", Path(".")))

    assert parse("0.0.0.0:9400") == parse("0.0.0.0:9400")
    assert (parse("[::1]:9400").host, parse("h:0").port) == ("::1", 0)


def test_the_parts_counters_equal_the_ledger_rows_of_a_run(recipe, inspector, tmp_path):
    db = tmp_path / "log.db"
    line = make_line(inspector, db, max_frames=60)  # 60 parts at 30 frames/s: 2 s of camera, most dropped
    metrics = metrics_server(recipe, db)
    mqtt = publisher(recipe, db, free_port(), flush_timeout_s=0.2)  # no broker: its lag grows with every row
    assert start_all([metrics, mqtt], line) == [metrics, mqtt]
    line.start()
    try:
        wait_until(lambda: line.stats().inspected >= 1, 60, "a first inspection")
        live = scrape(metrics.port)
        assert live[("station_camera_up", ())] == 1.0
        assert live[("station_line_state", (("state", "running"),))] == 1.0
        assert live[("station_frames_acquired_total", ())] >= 1
        assert line.join(120), "the line ends at max_frames"
        stats = line.stats()
        got = scrape(metrics.port)
        with sqlite3.connect(db) as con:
            by_verdict = dict(con.execute("SELECT verdict, SUM(frame_count) FROM inspections GROUP BY verdict"))
        for verdict in ("PASS", "FAIL", "NOT_INSPECTED"):
            assert got[("station_parts_total", (("verdict", verdict),))] == by_verdict.get(verdict, 0), verdict
        assert sum(by_verdict.values()) == stats.acquired == got[("station_frames_acquired_total", ())]
        assert got[("station_frames_dropped_total", ())] == stats.dropped > 0
        assert got[("station_frames_lost_total", ())] == 0 and got[("station_gap_rows_total", ())] == 0
        assert got[("station_stage_seconds_count", (("stage", "total"),))] == stats.inspected >= 1
        assert got[("station_stage_seconds_count", (("stage", "infer"),))] == stats.inspected
        # issue 28: every stage the docs name is served (acquire: the wait before inspection), and no `*_created`
        assert got[("station_stage_seconds_count", (("stage", "acquire"),))] == stats.inspected
        assert got[("station_stage_seconds_sum", (("stage", "acquire"),))] > 0
        assert not [name for name, _ in got if name.endswith("_created")]
        assert got[("station_inference_seconds_count", ())] == stats.inspected
        assert got[("station_inference_seconds_sum", ())] > 0
        assert got[("station_latency_seconds_count", ())] == stats.inspected
        assert stats.acquired == 60, "--max-frames is N parts delivered (issue 26)"
        assert got[("station_line_state", (("state", "stopped"),))] == 1.0
        assert got[("station_integration_lag_rows", (("integration", "mqtt"),))] == stats.recorded
        assert got[("station_integration_lag_seconds", (("integration", "mqtt"),))] >= 0
        dashboard = (Path(__file__).parents[2] / "docs" / "grafana" / "station-dashboard.json").read_text()
        queried = set(re.findall(r"station_[a-z_]+", " ".join(t["expr"] for p in json.loads(dashboard)["panels"]
                                                                 for t in p["targets"])))
        assert queried and queried <= {name for name, _ in got}, "the sample dashboard queries what is served"
        info = [labels for (name, labels), _ in got.items() if name == "station_info"]
        assert len(info) == 1 and dict(info[0]) | {"recipe_fingerprint": "-"} == {
            "station_id": STATION, "run_id": "run-1", "engine_id": inspector.engine_id, "recipe": "magnetic_tile",
            "recipe_fingerprint": "-", "source": line.source.name}

        with RejectLog(db, station_id=STATION, run_id="run-1") as ledger:  # a gap row, as a camera source logs it
            gap = FrameGap(source="cam", kind=GapKind.OUTAGE, first_id=9, last_id=20, count=12, start_ns=1, end_ns=2)
            metrics.on_row(ledger.record_row(gap), gap)
        got = scrape(metrics.port)
        assert (got[("station_gap_rows_total", ())], got[("station_gap_frames_total", ())]) == (1, 12)
        assert got[("station_parts_total", (("verdict", "NOT_INSPECTED"),))] == by_verdict["NOT_INSPECTED"]
    finally:
        line.stop()
        mqtt.close()
        metrics.close()
    with pytest.raises(OSError):
        scrape(metrics.port)


def test_a_port_in_use_is_named_and_the_line_runs_without_metrics(recipe, inspector, tmp_path, caplog):
    db = tmp_path / "log.db"
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        line = make_line(inspector, db, max_frames=1)
        busy = metrics_server(recipe, db, f"127.0.0.1:{port}")
        with pytest.raises(StationError, match=f"cannot serve /metrics on 127.0.0.1:{port}: Address already in use; "
                                               "choose a free port with \\[metrics\\] listen or --metrics"):
            busy.start(line)
        other = metrics_server(recipe, db)  # a second server in the same process: its own registry
        assert start_all([metrics_server(recipe, db, f"127.0.0.1:{port}"), other], line) == [other]
        assert "did not start" in caplog.text and "Address already in use" in caplog.text
        started = time.monotonic()
        stats = line.run()
    assert stats.inspected == 1 and line.failure is None and time.monotonic() - started < 120
    assert scrape(other.port)[("station_parts_total", (("verdict", "PASS"),))] + \
        scrape(other.port)[("station_parts_total", (("verdict", "FAIL"),))] == 1
    other.close()
