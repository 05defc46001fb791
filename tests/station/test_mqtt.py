"""MQTT: every ledger row reaches a real broker (amqtt, started here in its own process) exactly once after dedupe,
through broker outages and station restarts; retained line state and the Last Will."""
from __future__ import annotations

import collections
import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from inspection_core.records import FrameGap, GapKind, LineState, NotInspected, NotInspectedReason
from station.errors import RecipeError
from station.integrations import Context
from station.mqtt import from_table, parse_table, row_message
from station.pipeline import Line
from station.recipe import QueuePolicy, TableReader, load_recipe, shipped_recipe_path
from station.rejectlog import RejectLog
from station.sources import ReplaySource
from tests.station.waiting import free_port, wait_until

SAMPLES = __import__("station.cli", fromlist=["SAMPLES"]).SAMPLES
AMQTT = Path(sys.executable).with_name("amqtt")
STATION = "st-1"


class Broker:
    """An amqtt broker in its own process on a loopback port, to be killed and started again."""

    def __init__(self, folder: Path, port: int | None = None, tls: Path | None = None,
                 passwords: Path | None = None) -> None:
        self.port = port or free_port()
        self.config = folder / "amqtt.yaml"
        listener = f"listeners:\n  default:\n    type: tcp\n    bind: 127.0.0.1:{self.port}\n"
        if tls is not None:  # a folder with server.pem and server.key
            listener += f"    ssl: true\n    certfile: {tls / 'server.pem'}\n    keyfile: {tls / 'server.key'}\n"
        auth = (f"  amqtt.plugins.authentication.FileAuthPlugin:\n    password_file: {passwords}\n" if passwords
                else "  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n")
        self.config.write_text(f"{listener}plugins:\n{auth}")
        self.logfile = folder / "amqtt.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Broker:
        with open(self.logfile, "ab") as out:
            self.proc = subprocess.Popen([str(AMQTT), "-c", str(self.config)], stdout=out, stderr=subprocess.STDOUT)

        def up() -> bool:
            assert self.proc.poll() is None, f"amqtt ended: {self.logfile.read_text()[-2000:]}"
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0
        wait_until(up, 30, "the broker listening")
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def broker(tmp_path):
    if not AMQTT.exists():
        pytest.skip(f"needs the amqtt broker ({AMQTT}); pip install amqtt")
    b = Broker(tmp_path).start()
    yield b
    b.kill()


class Gate:
    """A TCP relay from the station to the broker that the test can shut: while shut, connections are refused,
    so the station reconnects only once the test's subscriber is back on a restarted broker."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.open = True
        self.live: list[socket.socket] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            try:
                if not self.open:
                    raise OSError("gate shut")
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=2)
                upstream.settimeout(None)
            except OSError:
                conn.close()
                continue
            self.live += [conn, upstream]
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def shut(self) -> None:
        """Refuse new connections and cut the open ones (the station sees its broker vanish)."""
        self.open = False
        for s in self.live:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.live.clear()

    def close(self) -> None:
        self.shut()
        self.server.close()


class Subscriber:
    """A paho client subscribed to ``topic`` (QoS 1) that resubscribes after a reconnect and keeps every message."""

    def __init__(self, port: int, topic: str, ca: Path | None = None, user: tuple[str, str] | None = None) -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, dict, bool]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-sub-{free_port()}")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        self.client.on_disconnect = lambda c, u, f, rc, p: self.subscribed.clear()
        self.client.on_message = self._message
        self.client.reconnect_delay_set(1, 1)
        if ca is not None:
            self.client.tls_set(ca_certs=str(ca))
        if user is not None:
            self.client.username_pw_set(*user)
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        assert self.subscribed.wait(10), "the subscriber could not subscribe"

    def _message(self, client, userdata, msg) -> None:
        with self.lock:
            self.messages.append((msg.topic, json.loads(msg.payload), bool(msg.retain)))

    def on(self, suffix: str) -> list[dict]:
        with self.lock:
            return [body for topic, body, _ in self.messages if topic.endswith(suffix)]

    def results(self) -> list[dict]:
        return self.on("/results")

    def states(self) -> list[str]:
        return [body["state"] for body in self.on("/state")]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def recipe():
    return load_recipe(shipped_recipe_path("magnetic_tile")).with_overrides({"engine.threads": 1})


@pytest.fixture(scope="module")
def inspector(recipe):
    from station.app import build_inspector

    return build_inspector(recipe)


def make_line(inspector, db: Path, run_id: str = "run-1", fps: float = 30.0, max_frames: int | None = 2) -> Line:
    """The bundled frames, looped, paced faster than the line inspects them: a few PASS/FAIL rows and many
    NOT_INSPECTED (dropped) rows, quickly."""
    ledger = RejectLog(db, station_id=STATION, run_id=run_id)  # rows: the line's judge (inspector) names the engine
    return Line(ReplaySource(SAMPLES, loop=True, pattern="*.jpg", fps=fps), inspector, ledger, frames_queue=1,
                frames_policy=QueuePolicy.DROP_OLDEST, max_frames=max_frames)


def publisher(recipe, db: Path, port: int, run_id: str = "run-1", **keys):
    table = {"url": f"mqtt://127.0.0.1:{port}", "flush_timeout_s": 10.0, "reconnect_max_s": 1, **keys}
    return from_table(TableReader(table, "test.toml", "mqtt", db.parent), Context(recipe, db, STATION, run_id))


def ledger(db: Path) -> list[dict]:
    with sqlite3.connect(db) as con:
        con.row_factory = sqlite3.Row
        return [dict(r) for r in con.execute("SELECT * FROM inspections ORDER BY id")]


def mark_of(db: Path) -> int:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT row_id FROM outbox_marks WHERE name LIKE 'mqtt %'").fetchone()[0]


# -- the table ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("table, message", [
    ({}, r"url: missing; add url = \"mqtt://HOST:PORT\""),
    ({"url": "http://broker:1883"}, "the scheme must be mqtt:// or mqtts://"),
    ({"url": "mqtt://me:secret@broker"}, "no user or password in the URL"),
    ({"url": "mqtt://broker:99999"}, "port must be a number from 1 to 65535"),
    ({"url": "mqtt://broker", "qos": 2}, "qos: unknown key; known keys: url, prefix, client_id"),
    ({"url": "mqtt://broker", "flush_timout_s": 2}, "did you mean 'flush_timeout_s'"),
    ({"url": "mqtt://broker", "prefix": "plant/#"}, "prefix: 'plant/#' is not allowed; use topic prefix"),
    ({"url": "mqtt://broker", "keepalive_s": 1}, "keepalive_s: 1 is not allowed; use an integer of seconds from 5"),
    ({"url": "mqtt://broker", "password_env": "X"}, "a password needs a user; add username"),
    ({"url": "mqtt://broker", "username": "u", "password_env": "STATION_TEST_UNSET_PW"},
     "environment variable STATION_TEST_UNSET_PW is not set"),
    ({"url": "mqtt://broker", "ca": "ca.pem"}, "TLS files need an mqtts:// url"),
    ({"url": "mqtts://broker", "ca": "nowhere.pem"}, "nowhere.pem is not a file"),
    ({"url": "mqtt://broker", "insecure": True}, "only for an mqtts:// url"),
    ({"url": "mqtt://broker", "history": "none"}, r'history: .none. is not allowed; use "all" \(the first contact'),
])
def test_the_table_is_checked_with_a_message_that_says_what_to_fix(tmp_path, table, message):
    os.environ.pop("STATION_TEST_UNSET_PW", None)
    with pytest.raises(RecipeError, match=message):
        parse_table(TableReader(table, "r.toml", "mqtt", tmp_path), STATION)


def test_a_good_table_gets_its_defaults_and_tls_files_resolve_beside_the_recipe(tmp_path, monkeypatch):
    (tmp_path / "ca.pem").write_text("x")
    monkeypatch.setenv("STATION_MQTT_PASSWORD", "pw")
    config = parse_table(TableReader({"url": "mqtts://broker.local", "ca": "ca.pem", "username": "station",
                                      "password_env": "STATION_MQTT_PASSWORD"}, "r.toml", "mqtt", tmp_path), "line-3")
    assert (config.host, config.port, config.tls, config.ca) == ("broker.local", 8883, True, tmp_path / "ca.pem")
    assert config.client_id == "station-line-3" and config.prefix == "inspection" and config.inflight == 100
    assert config.history == "all", "by default a first contact sends the whole log: nothing is skipped unasked"
    plain = parse_table(TableReader({"url": "mqtt://10.0.0.5"}, "r.toml", "mqtt", tmp_path), "line-3")
    assert (plain.port, plain.tls, plain.url) == (1883, False, "mqtt://10.0.0.5:1883")
    with pytest.raises(RecipeError, match=r"r.toml: \[station\] id: 'line/3' cannot be part of an MQTT topic"):
        parse_table(TableReader({"url": "mqtt://h"}, "r.toml", "mqtt", tmp_path), "line/3")


def test_a_row_message_carries_who_wrote_it_and_its_decoded_defects():
    row = {"id": 7, "station_id": None, "run_id": "r9", "verdict": "FAIL", "frame_id": 3,
           "defects_json": json.dumps([{"label": "defect", "area_px": 40}]), "labels_json": '["crack"]'}
    body = row_message(row, "st-1", "now")
    assert body == {"station_id": "st-1", "run_id": "r9", "id": 7, "verdict": "FAIL", "frame_id": 3,
                    "defects": [{"label": "defect", "area_px": 40}], "labels": ["crack"]}
    damaged = row_message({**row, "defects_json": "[{trunc"}, "st-1", "now")  # still goes out, as stored
    assert damaged["defects_json"] == "[{trunc" and "defects" not in damaged and damaged["id"] == 7


# -- against a real broker ------------------------------------------------------------------------------------------

def test_every_ledger_row_of_a_run_goes_out_once_with_its_fields_and_the_state_is_retained(
        broker, recipe, inspector, tmp_path):
    db = tmp_path / "log.db"
    sub = Subscriber(broker.port, f"inspection/{STATION}/#")
    line = make_line(inspector, db, max_frames=6)  # 6 parts at 30 frames/s into a queue of 1: some are dropped
    mqtt = publisher(recipe, db, broker.port)
    mqtt.start(line)
    line.listeners.append(mqtt)
    stats = line.run()
    mqtt.close()
    rows = ledger(db)
    assert stats.recorded == len(rows) and stats.acquired == 6 and stats.inspected >= 1 and stats.not_inspected > 0
    wait_until(lambda: len(sub.results()) >= len(rows), 10, "one message per row")
    got = sub.results()
    assert [m["id"] for m in got] == [r["id"] for r in rows], "one message per ledger row, in order, no duplicate"
    for message, row in zip(got, rows):
        assert (message["station_id"], message["run_id"], message["verdict"], message["frame_id"]) == \
               (STATION, "run-1", row["verdict"], row["frame_id"])
        assert message["defects"] == json.loads(row["defects_json"]) and message["reason"] == row["reason"]
    assert {m["verdict"] for m in got} >= {"NOT_INSPECTED"} and any(m["verdict"] in ("PASS", "FAIL") for m in got)
    # the state is another topic: "stopped", published by close(), may reach the subscriber after the last result
    wait_until(lambda: sub.states()[-1:] == ["stopped"], 10, "the stopped state")
    assert "running" in sub.states() and sub.states()[-1] == "stopped"
    status = mqtt.status()
    assert status["sent"] == len(rows) and status["lag_rows"] == 0 and status["mark"] == rows[-1]["id"]
    assert mark_of(db) == rows[-1]["id"], "the durable mark sits on the last acknowledged row"
    sub.close()
    late = Subscriber(broker.port, f"inspection/{STATION}/state")
    wait_until(lambda: late.states(), 10, "the retained state")
    assert late.states()[-1] == "stopped" and all(r for _, _, r in late.messages), "the state topic is retained"
    late.close()


def test_a_broker_killed_mid_run_loses_no_row_and_never_stops_the_line(broker, recipe, inspector, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="station.mqtt")
    db = tmp_path / "log.db"
    gate = Gate(broker.port)
    sub = Subscriber(broker.port, f"inspection/{STATION}/results")
    line = make_line(inspector, db, fps=20.0, max_frames=None)
    mqtt = publisher(recipe, db, gate.port)
    mqtt.start(line)
    line.listeners.append(mqtt)
    line.start()
    try:
        wait_until(lambda: len(sub.results()) >= 3, 30, "the first rows at the broker")
        # The station loses its broker: its connection is cut, and it may come back only once the subscriber
        # listens on the restarted broker. The broker dies once it has passed on what it acknowledged (a broker
        # killed between its PUBACK and its delivery loses that message by MQTT's own rules, not the station's).
        gate.shut()
        wait_until(lambda: not mqtt.connected, 10, "the station noticing")
        wait_until(lambda: {m["id"] for m in sub.results()} >= set(range(1, mqtt.status()["mark"] + 1)), 10,
                   "the acknowledged rows at the subscriber")
        broker.kill()
        recorded = line.stats().recorded
        wait_until(lambda: line.stats().recorded >= recorded + 10, 30, "rows logged while the broker is away")
        assert line.running and line.state is LineState.RUNNING, "a broker outage never stops the line"
        assert mqtt.status()["connected"] is False and mqtt.status()["lag_rows"] >= 10
        broker.start()
        wait_until(sub.subscribed.is_set, 20, "the subscriber back on the restarted broker")
        gate.open = True
        recorded = line.stats().recorded
        wait_until(lambda: line.stats().recorded >= recorded + 5, 30, "rows after the restart")
    finally:
        line.stop("test over")
        line.join(60)
        mqtt.close()
        gate.close()
    rows = ledger(db)
    wait_until(lambda: {m["id"] for m in sub.results()} >= {r["id"] for r in rows}, 20, "every row at the broker")
    keys = collections.Counter((m["station_id"], m["run_id"], m["id"]) for m in sub.results())
    assert sorted(k[2] for k in keys) == [r["id"] for r in rows], "every row exactly once after dedupe by id"
    assert line.failure is None and line.state is LineState.STOPPED
    assert mqtt.status()["lag_rows"] == 0 and mark_of(db) == rows[-1]["id"]
    words = caplog.text
    assert "the line runs on, rows wait in the reject log" in words and "is back" in words
    sub.close()


def test_a_dead_broker_never_stops_the_line_and_a_restarted_publisher_resumes_from_the_durable_mark(
        recipe, inspector, tmp_path, caplog):
    if not AMQTT.exists():
        pytest.skip(f"needs the amqtt broker ({AMQTT})")
    caplog.set_level(logging.INFO, logger="station.mqtt")
    db = tmp_path / "log.db"
    port = free_port()  # nothing listens here yet
    line = make_line(inspector, db, max_frames=6)  # 6 parts at 30 frames/s into a queue of 1: some are dropped
    mqtt = publisher(recipe, db, port, flush_timeout_s=0.3)
    mqtt.start(line)
    line.listeners.append(mqtt)
    stats = line.run()
    assert stats.inspected >= 1 and line.failure is None and stats.recorded == len(ledger(db)) == 6
    assert "cannot reach the broker at mqtt://127.0.0.1" in caplog.text
    assert "the line runs on, rows wait in the reject log and are sent when it is back" in caplog.text
    assert mqtt.status()["lag_rows"] == stats.recorded and not mqtt.status()["connected"]
    mqtt.close()
    assert f"{stats.recorded} row(s) not acknowledged" in caplog.text and mqtt.status()["sent"] == 0

    broker = Broker(tmp_path, port).start()
    try:
        sub = Subscriber(port, f"inspection/{STATION}/results")
        second = publisher(recipe, db, port, run_id="run-2")  # the station started again: the backlog goes out
        second.start(line)
        wait_until(lambda: len(sub.results()) >= stats.recorded, 20, "the backlog at the broker")
        second.close()
        first_ids = [r["id"] for r in ledger(db)]
        assert [m["id"] for m in sub.results()] == first_ids and mark_of(db) == first_ids[-1]
        assert {m["run_id"] for m in sub.results()} == {"run-1"}, "a row keeps the run that wrote it"

        with RejectLog(db, station_id=STATION, run_id="run-3") as log_:  # a later run, logged while no publisher ran
            log_.record(NotInspected(frame_id=1, timestamp_ns=1, source="cam", reason=NotInspectedReason.UNREADABLE,
                                     detail="truncated file", file="a.jpg"))
            log_.record(FrameGap(source="cam", kind=GapKind.LOST_IDS, first_id=2, last_id=5, count=4, start_ns=1,
                                 end_ns=2))
        third = publisher(recipe, db, port, run_id="run-3")
        third.start(line)
        wait_until(lambda: len(sub.results()) >= stats.recorded + 2, 20, "the new rows")
        third.close()
        new = sub.results()[stats.recorded:]
        assert [m["id"] for m in new] == [first_ids[-1] + 1, first_ids[-1] + 2], "only the rows after the mark"
        assert new[0]["reason"] == "unreadable" and new[0]["detail"] == "truncated file"
        assert (new[1]["verdict"], new[1]["frame_count"], new[1]["last_frame_id"]) == ("GAP", 4, 5)
        sub.close()
    finally:
        broker.kill()


def test_history_new_starts_a_first_contact_after_the_log_it_found_and_never_skips_rows_after_a_mark(
        broker, recipe, inspector, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="station.mqtt")
    db = tmp_path / "log.db"

    def write(run_id: str, n: int) -> None:
        with RejectLog(db, station_id=STATION, run_id=run_id) as log_:
            for i in range(n):
                log_.record(NotInspected(frame_id=i + 1, timestamp_ns=1, source="cam",
                                         reason=NotInspectedReason.UNREADABLE, detail="x", file=f"{i}.jpg"))

    write("old", 5)  # a year of history, as far as this broker is concerned
    sub = Subscriber(broker.port, f"inspection/{STATION}/results")
    line = make_line(inspector, db)
    first = publisher(recipe, db, broker.port, history="new")
    first.start(line)
    assert "history = \"new\", so the rows already in the reject log (ids up to 5) are not sent" in caplog.text
    write("run-1", 2)
    wait_until(lambda: len(sub.results()) >= 2, 20, "the new rows")
    first.close()
    assert [m["id"] for m in sub.results()] == [6, 7] and {m["run_id"] for m in sub.results()} == {"run-1"}
    assert mark_of(db) == 7
    write("between", 1)  # logged while no publisher ran: after the mark, so it must go out
    second = publisher(recipe, db, broker.port, run_id="run-2", history="new")
    second.start(line)
    wait_until(lambda: len(sub.results()) >= 3, 20, "the row after the mark")
    second.close()
    assert [m["id"] for m in sub.results()] == [6, 7, 8], "a destination with a mark skips nothing"
    assert caplog.text.count("history = \"new\"") == 1
    sub.close()


@pytest.mark.slow
def test_a_killed_station_leaves_its_last_will_and_its_next_run_sends_what_the_broker_missed(broker, tmp_path):
    """The station as a user runs it (``station run --mqtt``), killed with SIGKILL: the broker publishes the
    retained Last Will (offline); the next run sends every row after the durable mark, so after dedupe the broker
    got every ledger row of both runs."""
    db = tmp_path / "line.db"
    sub = Subscriber(broker.port, "inspection/#")
    command = [sys.executable, "-m", "station.cli", "run", "--source", f"replay:{SAMPLES}", "--headless",
               "--threads", "1", "--db", str(db), "--mqtt", f"mqtt://127.0.0.1:{broker.port}"]
    proc = subprocess.Popen([*command, "--fps", "5"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: proc.poll() is not None or ("running" in sub.states() and len(sub.results()) >= 2), 180,
                   "the station running and publishing")
        assert proc.poll() is None, proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    wait_until(lambda: sub.states() and sub.states()[-1] == "offline", 15, "the Last Will")
    late = Subscriber(broker.port, "inspection/+/state")
    wait_until(lambda: late.states(), 10, "the retained state")
    assert late.states()[-1] == "offline"
    late.close()
    done = subprocess.run([*command, "--fps", "0", "--max-frames", "1", "--no-loop"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    rows = ledger(db)
    assert len({r["run_id"] for r in rows}) == 2
    wait_until(lambda: {(m["run_id"], m["id"]) for m in sub.results()} >= {(r["run_id"], r["id"]) for r in rows},
               20, "every row of both runs at the broker")
    assert sub.states()[-1] == "stopped"
    sub.close()


def make_certificates(folder: Path) -> None:
    """A test CA (ca.pem) and a broker certificate for 127.0.0.1 signed by it (server.pem, server.key)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])

    def cert(subject, public_key, extension, serial):
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(public_key)
                .serial_number(serial).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(extension, critical=False).sign(ca_key, hashes.SHA256()))
    ca = cert(ca_name, ca_key.public_key(), x509.BasicConstraints(ca=True, path_length=None), 1)
    server = cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]), key.public_key(),
                  x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), 2)
    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    (folder / "server.pem").write_bytes(server.public_bytes(pem))
    (folder / "server.key").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))


def test_tls_and_a_password_from_the_environment_reach_a_broker_that_asks_for_both(
        recipe, inspector, tmp_path, monkeypatch, caplog):
    pytest.importorskip("cryptography")
    hasher = pytest.importorskip("pwdlib.hashers.argon2").Argon2Hasher()
    if not AMQTT.exists():
        pytest.skip(f"needs the amqtt broker ({AMQTT})")
    caplog.set_level(logging.INFO, logger="station.mqtt")
    make_certificates(tmp_path)
    (tmp_path / "passwd").write_text(f"station:{hasher.hash('s3cret')}\nreader:{hasher.hash('r3ad')}\n")
    broker = Broker(tmp_path, tls=tmp_path, passwords=tmp_path / "passwd").start()
    db = tmp_path / "log.db"
    try:
        sub = Subscriber(broker.port, f"inspection/{STATION}/results", ca=tmp_path / "ca.pem", user=("reader", "r3ad"))
        line = make_line(inspector, db)
        with RejectLog(db, station_id=STATION, run_id="run-1") as log_:
            for i in range(3):
                log_.record(NotInspected(frame_id=i, timestamp_ns=i, source="cam", reason=NotInspectedReason.STOPPED))
        keys = {"url": f"mqtts://127.0.0.1:{broker.port}", "ca": str(tmp_path / "ca.pem"), "username": "station",
                "password_env": "STATION_MQTT_PASSWORD"}
        monkeypatch.setenv("STATION_MQTT_PASSWORD", "wrong")
        refused = publisher(recipe, db, broker.port, flush_timeout_s=0.3, **keys)
        refused.start(line)
        wait_until(lambda: "refused the connection: Not authorized" in caplog.text, 15, "the refusal logged")
        refused.close()
        assert "check [mqtt] username, password_env and client_id" in caplog.text and refused.status()["sent"] == 0
        monkeypatch.setenv("STATION_MQTT_PASSWORD", "s3cret")
        good = publisher(recipe, db, broker.port, **keys)
        good.start(line)
        wait_until(lambda: len(sub.results()) >= 3, 15, "the rows over TLS")
        good.close()
        assert [m["id"] for m in sub.results()] == [1, 2, 3] and good.status()["lag_rows"] == 0
        sub.close()
    finally:
        broker.kill()


class SilentBroker:
    """A broker that accepts the connection and every PUBLISH but never acknowledges one (no PUBACK): what a
    station sees when a kill or a network cut falls between its send and the broker's acknowledgement."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.publishes = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _read(conn: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise OSError("closed")
            data += chunk
        return data

    def _serve(self, conn: socket.socket) -> None:
        try:
            while True:
                kind = self._read(conn, 1)[0] >> 4
                length, shift = 0, 0
                while True:  # MQTT's variable-length remaining length
                    byte = self._read(conn, 1)[0]
                    length |= (byte & 0x7F) << shift
                    shift += 7
                    if not byte & 0x80:
                        break
                self._read(conn, length)
                if kind == 1:        # CONNECT -> CONNACK, accepted
                    conn.sendall(bytes([0x20, 0x02, 0x00, 0x00]))
                elif kind == 3:      # PUBLISH: swallowed, never acknowledged
                    self.publishes += 1
                elif kind == 12:     # PINGREQ -> PINGRESP
                    conn.sendall(bytes([0xD0, 0x00]))
                elif kind == 14:     # DISCONNECT
                    return
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.server.close()


def test_the_durable_mark_waits_for_the_brokers_puback_not_for_the_send(recipe, inspector, tmp_path):
    """Issue 26: a mark advanced at publish would lose the rows a kill catches between send and PUBACK."""
    db = tmp_path / "log.db"
    with RejectLog(db, station_id=STATION, run_id="run-1") as log_:
        for k in range(3):
            log_.record(NotInspected(frame_id=k + 1, timestamp_ns=1, source="cam", reason=NotInspectedReason.DROPPED))
    silent = SilentBroker()
    line = make_line(inspector, db)
    mqtt = publisher(recipe, db, silent.port, flush_timeout_s=0.5)
    try:
        mqtt.start(line)
        wait_until(lambda: silent.publishes >= 3, 20, "the three rows sent to the broker")
    finally:
        mqtt.close()
        silent.close()
    assert mqtt.status()["sent"] == 0 and mqtt.status()["mark"] == 0
    with sqlite3.connect(db) as con:
        marks = con.execute("SELECT row_id FROM outbox_marks WHERE name LIKE 'mqtt %'").fetchall()
    assert marks in ([], [(0,)]), "no PUBACK, no mark: the next start sends these rows again"
