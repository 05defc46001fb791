"""MQTT: every ledger row goes to a broker (MES, SCADA), shipped from the reject log so a broker outage loses nothing.

Topics (``<prefix>`` is ``[mqtt] prefix``, default ``inspection``; ``<station>`` the station id):

- ``<prefix>/<station>/results``: one JSON message per ledger row (PASS, FAIL, NOT_INSPECTED, GAP), QoS 1, with
  ``station_id``, ``run_id``, ``id`` (the row id) and the row's columns, ``defects`` and ``labels`` decoded from JSON.
  Consumers deduplicate on ``(station_id, run_id, id)``: a row may arrive twice around an outage, never zero times.
- ``<prefix>/<station>/state``: retained, QoS 1: ``{"station_id", "run_id", "state", "time_utc"}`` with ``state``
  one of ``online`` (connected, line not started yet), ``running``, ``draining``, ``stopped``, ``error``; the Last
  Will sets ``offline`` when the station vanishes without saying goodbye (killed, power cut, network gone).

Rows are read from the ledger (:class:`station.outbox.LedgerCursor`), at most ``inflight`` at a time awaiting the
broker's PUBACK (bounded memory); the durable mark moves only over rows the broker acknowledged, in order. After an
outage (paho reconnects by itself and repeats unacknowledged messages) or a restart of the station, the rows after
the mark go out again. ``close()`` waits at most ``flush_timeout_s`` for what is pending; the rest waits in the log
for the next start.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import ssl
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

from inspection_core.records import LineState
from station.errors import RecipeError
from station.outbox import LedgerCursor
from station.recipe import (MISSING, Refused, TableReader, check_bool, check_choice, check_float, check_int,
                            check_path, check_str)
from station.rejectlog import decode_labels, format_utc

log = logging.getLogger(__name__)

#: line state -> what the state topic says
STATE_WORDS = {LineState.STARTING: "online", LineState.RUNNING: "running", LineState.DRAINING: "draining",
               LineState.STOPPED: "stopped", LineState.ERROR: "error"}
OFFLINE = "offline"
_POLL_S = 0.2  # how often the line state is looked at, and the longest a row waits for the publisher to wake
_PORTS = {"mqtt": 1883, "mqtts": 8883}


@dataclass(frozen=True)
class MqttConfig:
    """The checked ``[mqtt]`` table."""

    url: str                     # mqtt://HOST:PORT or mqtts://HOST:PORT, without credentials
    host: str
    port: int
    tls: bool
    prefix: str = "inspection"
    client_id: str = ""
    username: str | None = None
    password_env: str | None = None
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    insecure: bool = False
    keepalive_s: int = 30
    inflight: int = 100
    flush_timeout_s: float = 5.0
    reconnect_max_s: float = 10.0
    history: str = "all"         # first contact with this broker: "all" rows of the log, or only "new" ones


_KEYS = {
    "url": '"mqtt://HOST:PORT" or "mqtts://HOST:PORT" (TLS), e.g. "mqtt://broker.local:1883" (or pass --mqtt URL)',
    "prefix": 'topic prefix without wildcards or leading/trailing "/", e.g. "inspection" (the default)',
    "client_id": 'a non-empty string, e.g. "station-line-3" (default: "station-" and the station id)',
    "username": 'the user name the broker knows, e.g. "station"',
    "password_env": 'the NAME of an environment variable holding the password, e.g. "STATION_MQTT_PASSWORD"',
    "ca": 'a PEM file of the certificate authority that signed the broker\'s certificate (mqtts:// only)',
    "cert": "a PEM client certificate file, for brokers that ask for one (mqtts:// only)",
    "key": "the PEM private key file of cert (mqtts:// only)",
    "insecure": "true or false (true: do not verify the broker's certificate; for a first test only; mqtts:// only)",
    "keepalive_s": "an integer of seconds from 5 to 3600 (the broker declares the station offline after 1.5 x)",
    "inflight": "an integer from 1 to 10000 (rows sent and awaiting the broker's acknowledgement at once)",
    "flush_timeout_s": "a number of seconds >= 0 (how long closing waits for the broker to take what is pending)",
    "reconnect_max_s": "a number of seconds >= 1 (longest wait between two tries to reach the broker)",
    "history": '"all" (the first contact with this broker sends every row already in the log) or "new" (it starts '
               'after the newest row; the rows before are never sent there)',
}


def parse_table(t: TableReader, station_id: str) -> MqttConfig:
    """Check ``[mqtt]`` (relative TLS files start from ``t.base``, the recipe's folder); never connects."""
    scheme, host, port = t.get("url", MISSING, _broker, _KEYS["url"])
    tls = scheme == "mqtts"
    prefix = t.get("prefix", "inspection", _prefix, _KEYS["prefix"])
    if any(c in station_id for c in "+#/"):
        raise RecipeError(f"{t.where}: [station] id: {station_id!r} cannot be part of an MQTT topic (no '+', '#' or "
                          "'/'); use a plain name, e.g. \"line-3-cam-A\"")
    client_id = t.get("client_id", f"station-{station_id}", check_str, _KEYS["client_id"])
    username = t.get("username", None, check_str, _KEYS["username"])
    password_env = t.get("password_env", None, _env_name, _KEYS["password_env"])
    if password_env is not None and username is None:
        raise t.fail("password_env", 'a password needs a user; add username = "..."')
    if password_env is not None and os.environ.get(password_env) is None:
        raise t.fail("password_env", f"the environment variable {password_env} is not set; export it (e.g. in the "
                                     "service's EnvironmentFile) before starting the station")

    def pem(key: str) -> Path | None:
        def check(v: Any) -> Path:
            if not tls:
                raise Refused('TLS files need an mqtts:// url; use url = "mqtts://HOST:8883"')
            path = check_path(t.base)(v)
            if not path.is_file():
                raise Refused(f"{path} is not a file; use {_KEYS[key]}")
            return path
        return t.get(key, None, check, _KEYS[key])

    ca, cert, key = pem("ca"), pem("cert"), pem("key")
    if key is not None and cert is None:
        raise t.fail("key", 'a key needs its certificate; add cert = "client.pem"')

    def insecure_check(v: Any) -> bool:
        if check_bool(v) and not tls:
            raise Refused("only for an mqtts:// url (plain mqtt:// has no certificate to skip); remove it")
        return v

    config = MqttConfig(
        url=f"{scheme}://{host}:{port}", host=host, port=port, tls=tls, prefix=prefix, client_id=client_id,
        username=username, password_env=password_env, ca=ca, cert=cert, key=key,
        insecure=t.get("insecure", False, insecure_check, _KEYS["insecure"]),
        keepalive_s=t.get("keepalive_s", 30, check_int(5, 3600), _KEYS["keepalive_s"]),
        inflight=t.get("inflight", 100, check_int(1, 10000), _KEYS["inflight"]),
        flush_timeout_s=t.get("flush_timeout_s", 5.0, check_float(0.0), _KEYS["flush_timeout_s"]),
        reconnect_max_s=t.get("reconnect_max_s", 10.0, check_float(1.0), _KEYS["reconnect_max_s"]),
        history=t.get("history", "all", check_choice("all", "new"), _KEYS["history"]),
    )
    t.finish()
    return config


def _broker(v: Any) -> tuple[str, str, int]:
    """``url`` -> (scheme, host, port)."""
    parts = urlsplit(check_str(v).strip())
    if parts.scheme not in _PORTS:
        raise Refused(f'the scheme must be mqtt:// or mqtts:// (TLS); use {_KEYS["url"]}')
    if parts.username or parts.password:
        raise Refused("no user or password in the URL (it would show in process lists and logs); set [mqtt] "
                      "username, and password_env naming an environment variable that holds the password")
    try:
        port = parts.port or _PORTS[parts.scheme]
    except ValueError:
        raise Refused(f"the port must be a number from 1 to 65535; use {_KEYS['url']}") from None
    if not parts.hostname or parts.path not in ("", "/") or parts.query or not 0 < port < 65536:
        raise Refused(f"give only a host and a port; use {_KEYS['url']}")
    return parts.scheme, parts.hostname, port


def _prefix(v: Any) -> str:
    if any(c in check_str(v) for c in "+#\0") or v.startswith("/") or v.endswith("/") or "//" in v:
        raise ValueError
    return v


def _env_name(v: Any) -> str:
    if "=" in check_str(v):
        raise ValueError
    return v


def row_message(row: Mapping[str, Any], station_id: str, run_id: str) -> dict[str, Any]:
    """The JSON object published for a ledger row: who wrote it, its id, its columns with defects and labels decoded
    (``patches`` too when the classifier ran on patches)."""
    out: dict[str, Any] = {"station_id": row.get("station_id") or station_id, "run_id": row.get("run_id") or run_id,
                           "id": int(row["id"])}
    for key, value in row.items():
        if key not in ("id", "station_id", "run_id", "defects_json", "labels_json"):
            out[key] = value
    try:
        out["defects"] = json.loads(row.get("defects_json") or "[]")
        labels, patches = decode_labels(row.get("labels_json") or "[]")
    except (ValueError, TypeError, AttributeError):  # a damaged row still goes out, as stored
        out.update(defects_json=row.get("defects_json"), labels_json=row.get("labels_json"))
        return out
    out["labels"] = labels
    if patches:
        out["patches"] = patches
    return out


class MqttPublisher:
    """The ``[mqtt]`` integration (:class:`station.integrations.Integration`): ships ledger rows and the line state
    to a broker on its own thread; see the module docstring."""

    name = "mqtt"

    def __init__(self, config: MqttConfig, db_path: Path, station_id: str, run_id: str) -> None:
        self.config = config
        self.db_path = Path(db_path)
        self.station_id, self.run_id = station_id, run_id
        base = f"{config.prefix}/{station_id}"
        self.results_topic, self.state_topic = f"{base}/results", f"{base}/state"
        self.destination = f"mqtt {config.url} {self.results_topic}"
        self.sent = 0               # rows the broker acknowledged since start
        self.connected = False
        self._line: Any = None
        self._cursor: LedgerCursor | None = None
        self._client: Any = None
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._acks: collections.deque[int] = collections.deque()  # mids the broker acknowledged (paho's thread)
        self._pending: collections.deque[int] = collections.deque()  # row ids sent, oldest first
        self._row_of: dict[int, int] = {}  # mid -> row id, for rows awaiting their PUBACK
        self._acked: set[int] = set()
        self._mark = 0
        self._sent_upto = 0
        self._state_sent: str | None = None
        self._state_mid: int | None = None
        self._resend = False        # (re)connected: publish the state again
        self._outage_told = False   # the broker's absence was logged (once per outage)
        self._refusal_told = False  # the broker's refusal was logged (once until it accepts)
        self._final: dict[str, Any] | None = None

    # -- integration -----------------------------------------------------------------------------------------
    def start(self, line: Any) -> None:
        import paho.mqtt.client as mqtt

        self._line = line
        self._cursor = LedgerCursor(self.db_path, self.destination)
        try:
            self._client = self._make_client(mqtt)
        except Exception:  # bad TLS files...: no half-started publisher keeps the log open
            self._cursor.close()
            self._cursor = None
            raise
        c = self.config
        if c.history == "new" and (skipped := self._cursor.start_at_newest()) is not None:
            log.info("first contact with %s: history = \"new\", so the rows already in the reject log (ids up to %d) "
                     "are not sent there", self.destination, skipped)
        self._mark = self._sent_upto = self._cursor.mark()
        backlog = self._cursor.last_id() - self._mark
        log.info("publishing to %s on %s (%d row(s) of the reject log after mark %d to send)", c.url,
                 self.results_topic, max(0, backlog), self._mark)
        self._client.connect_async(c.host, c.port, keepalive=c.keepalive_s)
        self._client.loop_start()
        self._thread = threading.Thread(target=self._run, name="mqtt-outbox", daemon=True)
        self._thread.start()

    def _make_client(self, mqtt: Any) -> Any:
        c = self.config
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=c.client_id, clean_session=True,
                             protocol=mqtt.MQTTv311)
        if c.username is not None:
            client.username_pw_set(c.username, os.environ.get(c.password_env) if c.password_env else None)
        if c.tls:
            client.tls_set(ca_certs=str(c.ca) if c.ca else None, certfile=str(c.cert) if c.cert else None,
                           keyfile=str(c.key) if c.key else None,
                           cert_reqs=ssl.CERT_NONE if c.insecure else ssl.CERT_REQUIRED)
            client.tls_insecure_set(c.insecure)
        client.will_set(self.state_topic, self._state_payload(OFFLINE, with_time=False), qos=1, retain=True)
        client.max_inflight_messages_set(c.inflight + 2)  # the rows, and the state message
        client.reconnect_delay_set(min_delay=1, max_delay=max(1, round(c.reconnect_max_s)))
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

    def on_row(self, row: Mapping[str, Any], entry: Any) -> None:
        self._wake.set()  # the row is committed: the publisher reads it from the log

    def status(self) -> dict[str, Any]:
        if self._final is not None:
            return dict(self._final)
        rows, seconds = self._cursor.lag() if self._cursor is not None else (0, 0.0)
        return {"url": self.config.url, "topic": self.results_topic, "connected": self.connected, "sent": self.sent,
                "mark": self._mark, "lag_rows": rows, "lag_seconds": round(seconds, 3)}

    def close(self) -> None:
        if self._thread is None:
            return
        self._closing.set()
        self._wake.set()
        self._thread.join(self.config.flush_timeout_s + 10.0)
        self._thread = None

    # -- paho callbacks (its network thread; they only note and wake) --------------------------------------------
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            (log.debug if self._refusal_told else log.error)(
                "the broker %s refused the connection: %s; check [mqtt] username, password_env and client_id (rows "
                "wait in the reject log)", self.config.url, reason)
            self._refusal_told = True
            return
        self.connected = True
        self._refusal_told = False
        if self._outage_told:
            log.warning("%s is back; sending the rows of the reject log after mark %d", self.config.url,
                        self._mark)
        else:
            log.info("connected to %s", self.config.url)
        self._outage_told = False
        self._resend = True
        self._wake.set()

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        self.connected = False
        self._tell_outage("cannot reach the broker")

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.connected = False
        if not self._closing.is_set():
            self._tell_outage(f"lost the broker ({reason})")

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        self._acks.append(mid)
        self._wake.set()

    def _tell_outage(self, what: str) -> None:
        if self._outage_told or self._closing.is_set():
            log.debug("%s at %s", what, self.config.url)
            return
        self._outage_told = True
        log.warning("%s at %s; the line runs on, rows wait in the reject log and are sent when it is back "
                    "(retrying at least every %g s)", what, self.config.url, self.config.reconnect_max_s)

    # -- the publisher's thread -----------------------------------------------------------------------------------
    def _state_payload(self, state: str, with_time: bool = True) -> str:
        body = {"station_id": self.station_id, "run_id": self.run_id, "state": state}
        if with_time:
            body["time_utc"] = format_utc(datetime.now(timezone.utc))
        return json.dumps(body)

    def _run(self) -> None:
        deadline = None
        failures = 0
        try:
            while True:
                self._wake.wait(_POLL_S if not failures else 1.0)
                self._wake.clear()
                if self._closing.is_set():
                    deadline = deadline or time.monotonic() + self.config.flush_timeout_s
                try:
                    self._settle_acks()
                    self._publish_state()
                    if deadline is not None and (time.monotonic() >= deadline or (
                            self._mark >= self._cursor.last_id() and self._state_mid is None)):
                        break
                    if self.connected:
                        self._send_rows()
                    failures = 0
                except Exception:  # noqa: BLE001 - a busy log, a broken message: retried; never stops the line
                    failures += 1
                    (log.exception if failures == 1 else log.debug)(
                        "the MQTT publisher failed; it tries again every second, rows after mark %d wait in the "
                        "reject log", self._mark)
                    if deadline is not None and time.monotonic() >= deadline:
                        break
        finally:
            self._finish()

    def _settle_acks(self) -> None:
        """Rows whose PUBACK came back; the mark moves over the acknowledged rows at the head of the sent ones."""
        while self._acks:
            mid = self._acks.popleft()
            if mid == self._state_mid:
                self._state_mid = None
            row_id = self._row_of.pop(mid, None)
            if row_id is not None:
                self._acked.add(row_id)
                self.sent += 1
        last = None
        while self._pending and self._pending[0] in self._acked:
            last = self._pending.popleft()
            self._acked.discard(last)
        if last is not None and last > self._mark:
            self._cursor.advance(last)
            self._mark = last

    def _publish_state(self) -> None:
        state = STATE_WORDS.get(self._line.state, "error")
        if state != self._state_sent or (self._resend and self.connected):
            self._resend = False
            info = self._client.publish(self.state_topic, self._state_payload(state), qos=1, retain=True)
            self._state_sent, self._state_mid = state, info.mid

    def _send_rows(self) -> None:
        room = self.config.inflight - len(self._pending)
        if room <= 0:
            return
        for row in self._cursor.rows_after(self._sent_upto, limit=room):
            payload = json.dumps(row_message(row, self.station_id, self.run_id), separators=(",", ":"))
            info = self._client.publish(self.results_topic, payload, qos=1)
            self._row_of[info.mid] = int(row["id"])
            self._pending.append(int(row["id"]))
            self._sent_upto = int(row["id"])

    def _finish(self) -> None:
        left = 0
        try:
            left = max(0, self._cursor.last_id() - self._mark)
            if left:
                log.warning("%d row(s) not acknowledged by %s yet; they stay in the reject log %s and go out "
                            "at the next start (mark at row %d)", left, self.config.url, self.db_path, self._mark)
            rows, seconds = self._cursor.lag()
        except Exception:  # noqa: BLE001
            rows, seconds = left, 0.0
        self._final = {"url": self.config.url, "topic": self.results_topic, "connected": self.connected,
                       "sent": self.sent, "mark": self._mark, "lag_rows": rows, "lag_seconds": round(seconds, 3)}
        try:
            self._client.disconnect()  # a clean goodbye: the broker does not send the Last Will
            self._client.loop_stop()
        except Exception:  # noqa: BLE001
            log.debug("disconnecting failed", exc_info=True)
        self.connected = False
        self._cursor.close()


def from_table(t: TableReader, context: Any) -> MqttPublisher:
    """The ``[mqtt]`` integration of a recipe, checked (never connects here); see :mod:`station.integrations`."""
    config = parse_table(t, context.station_id)
    return MqttPublisher(config, Path(context.db_path), context.station_id, context.run_id)
