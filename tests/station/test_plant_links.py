"""Issue 15's "done means", as a user runs it: one `station run` with OPC UA, Prometheus and MQTT at once. A PLC
drives single jobs and reads verdicts, /metrics counts the same parts as the log, the broker gets one message per
ledger row, and a PLC that drops its session mid-run neither stops the line nor loses a row. (A broker killed
mid-run: tests/station/test_mqtt.py.)"""
from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("asyncua")
pytest.importorskip("paho.mqtt")

from tests.station.test_mqtt import AMQTT, Broker, Subscriber, free_port, wait_until  # noqa: E402
from tests.station.test_opcua import PASSWORD, USER, Plc, run, small_frames  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def ledger(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT id, verdict, file FROM inspections ORDER BY id").fetchall()


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {m.group(1): float(m.group(2)) for m in
            re.finditer(r'^station_parts_total\{verdict="(\w+)"[^}]*\} ([0-9.e+]+)$', text, re.M)}


@pytest.mark.slow
def test_one_station_run_serves_a_plc_a_broker_and_prometheus_from_the_same_ledger(tmp_path):
    if not AMQTT.exists():
        pytest.skip(f"needs the amqtt broker ({AMQTT}); pip install amqtt")
    frames = small_frames(tmp_path)
    broker = Broker(tmp_path).start()
    subscriber = Subscriber(broker.port, "inspection/+/results")
    opcua_port, metrics_port = free_port(), free_port()
    db = tmp_path / "ledger" / "rejects.db"
    env = dict(os.environ, STATION_OPCUA_USER=USER, STATION_OPCUA_PASSWORD=PASSWORD, PYTHONPATH=str(REPO))
    station = subprocess.Popen(
        [sys.executable, "-m", "station.cli", "run", "--source", f"replay:{frames}", "--headless", "--threads", "1",
         "--db", str(db), "--opcua", f"opc.tcp://127.0.0.1:{opcua_port}", "--metrics", f"127.0.0.1:{metrics_port}",
         "--mqtt", f"mqtt://127.0.0.1:{broker.port}", "--json"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        from asyncua import Client

        async def plc_jobs(count: int) -> list[tuple[str, str]]:
            client = Client(f"opc.tcp://127.0.0.1:{opcua_port}", timeout=60)
            client.set_user(USER)
            client.set_password(PASSWORD)
            async with client:
                plc = await Plc(client).setup()
                _internal, _completed, error = await plc.prepare("magnetic_tile")  # 1. select the recipe
                assert error == 0
                await plc.wait_state("Ready", timeout=120)
                seen = []
                for _ in range(count):
                    _job, event = await plc.single_job(timeout=120)
                    seen.append((event.ResultId, await plc.part("Verdict")))
                return seen

        def opcua_up() -> bool:
            assert station.poll() is None, station.communicate()[1][-3000:]
            import socket
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", opcua_port)) == 0

        wait_until(opcua_up, 240, "the station's OPC UA server listening")
        first = run(plc_jobs(3))  # the PLC drives three single jobs, then its session ends (a dropped client)
        rows = ledger(db)
        assert [(str(i), v) for i, v, _ in rows] == first  # each verdict read is the ledger row's
        second = run(plc_jobs(2))  # a new session: the line went on
        assert [(str(i), v) for i, v, _ in ledger(db)][3:] == second
        counted = scrape(metrics_port)
        by_verdict = {}
        for _id, verdict, _file in ledger(db):
            by_verdict[verdict] = by_verdict.get(verdict, 0) + 1
        assert {k: int(v) for k, v in counted.items() if v} == by_verdict  # /metrics counts what the log holds
        wait_until(lambda: sorted({m["id"] for m in subscriber.results()}) == [i for i, _, _ in ledger(db)], 60,
                   "one message per ledger row at the subscriber")
    finally:
        station.send_signal(signal.SIGTERM)
        out, err = station.communicate(timeout=120)
        subscriber.close()
        broker.kill()
    assert station.returncode == 128 + signal.SIGTERM, err[-3000:]
    final = ledger(db)
    assert len(final) == 5 and sorted({m["id"] for m in subscriber.results()}) == [i for i, _, _ in final]
    assert '"opcua"' in out and '"mqtt"' in out and '"metrics"' in out  # the summary reports each integration
