"""OPC UA for Machine Vision against a real line: a real asyncua client over loopback drives the station like a PLC.

One station (bundled magnetic-tile frames plus a corrupt file, shipped recipe on one ONNX Runtime thread, ledger in
a temporary folder) serves every test of the module: importing the MachineVision NodeSet takes seconds.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import pytest

asyncua = pytest.importorskip("asyncua")
from asyncua import Client, ua  # noqa: E402

from station import integrations  # noqa: E402
from station.app import build_line  # noqa: E402
from station.errors import RecipeError, SourceError  # noqa: E402
from station.opcua import NAMESPACE, check_password, hash_password, parse_table  # noqa: E402
from station.recipe import TableReader  # noqa: E402
from station.opcua.server import STATION_NS  # noqa: E402
from station.recipe import load_recipe, shipped_recipe_path  # noqa: E402
from station.rejectlog import new_run_id  # noqa: E402
from station.sources import ReplaySource  # noqa: E402
from tests.station.waiting import free_port  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[2] / "station" / "samples" / "magnetic-tile"
SMALL = ("blowhole_exp4_num_54308.jpg", "free_exp1_num_69803.jpg", "free_exp6_num_55020.jpg")  # the fastest three


def small_frames(tmp_path: Path) -> Path:
    """A replay folder holding the three fastest bundled frames (:data:`SMALL`)."""
    frames = tmp_path / "frames"
    frames.mkdir()
    for name in SMALL:
        shutil.copy(SAMPLES / name, frames / name)
    return frames
USER, PASSWORD = "plc", "line-3-secret"
STRICT_THRESHOLD = 0.9
CAUSE = ua.Variant(0, ua.VariantType.Int32)


def rows(db: Path, where: str = "", params: tuple = ()) -> list[dict]:
    with contextlib.closing(sqlite3.connect(db)) as con:
        con.row_factory = sqlite3.Row
        return [dict(r) for r in con.execute(f"SELECT * FROM inspections {where} ORDER BY id", params)]


class Station:
    """The line and its OPC UA integration, started like ``station run`` does."""

    def __init__(self, root: Path, control: str = "plc", **opcua) -> None:
        frames = root / "frames"
        frames.mkdir()
        for name in SMALL:
            shutil.copy(SAMPLES / name, frames / name)
        (frames / "zz_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all" * 4)
        users = root / "users.toml"
        users.write_text(f'[users]\n{USER} = "{hash_password(PASSWORD)}"\n')
        strict = root / "strict.toml"
        text = shipped_recipe_path("magnetic_tile").read_text()
        text, n = re.subn(r"(?m)^score_threshold = [0-9.]+", f"score_threshold = {STRICT_THRESHOLD}", text)
        assert n == 1, "the shipped recipe's [rules] score_threshold line moved: update this fixture"
        strict.write_text(text
                          .replace('path = "../samples/magnetic-tile"', f'path = "{SAMPLES.as_posix()}"')
                          .replace("threads = 0", "threads = 1"))
        self.port = free_port()
        self.endpoint = f"opc.tcp://127.0.0.1:{self.port}"
        self.db = root / "rejects.db"
        self.pki = root / "pki"
        self.recipe = load_recipe(shipped_recipe_path("magnetic_tile")).with_overrides({
            "source.path": str(frames), "engine.threads": 1, "log.db": str(self.db), "station.min_free_mb": 0,
            "opcua.endpoint": self.endpoint, "opcua.users_file": str(users), "opcua.recipes": [str(strict)],
            "opcua.pki": str(self.pki), "opcua.control": control, **{f"opcua.{k}": v for k, v in opcua.items()}})
        self.run_id = new_run_id()
        context = integrations.Context(self.recipe, self.db, self.recipe.station.id, self.run_id)
        wanted = integrations.configure(self.recipe, context)
        self.line = build_line(self.recipe, run_id=self.run_id)
        self.active = integrations.start_all(wanted, self.line)
        assert [i.name for i in self.active] == ["opcua"]
        self.line.start()

    def close(self) -> dict:
        self.line.stop("test done")
        self.line.join(30)
        return integrations.close_all(self.active)

    def close_in_background(self) -> threading.Thread:
        """What ``station run`` does once the line has ended: close the integrations (in a thread, as it may wait)."""
        closing = threading.Thread(target=integrations.close_all, args=(self.active,), name="closing")
        closing.start()
        return closing


@pytest.fixture(scope="module")
def station(tmp_path_factory):
    s = Station(tmp_path_factory.mktemp("opcua-station"))
    yield s
    s.close()


class Plc:
    """A PLC-side session: the namespaces, the VisionSystem's nodes and its ResultReady events."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.events: asyncio.Queue = asyncio.Queue()

    async def setup(self, events: bool = True) -> Plc:
        c = self.client
        await c.load_data_type_definitions()
        self.mv = await c.get_namespace_index(NAMESPACE)
        self.st = await c.get_namespace_index(STATION_NS)
        self.vision = await c.nodes.objects.get_child(f"{self.st}:VisionSystem")
        self.vsm = await self.vision.get_child(f"{self.mv}:VisionStateMachine")
        self.auto = await self.vsm.get_child(f"{self.mv}:AutomaticModeStateMachine")
        self.recipes = await self.vision.get_child(f"{self.mv}:RecipeManagement")
        if events:
            self.sub = await c.create_subscription(5, self)
            await self.sub.subscribe_events(c.nodes.server, ua.NodeId(1024, self.mv))  # ResultReadyEventType
        return self

    def event_notification(self, event) -> None:
        self.events.put_nowait(event)

    def status_change_notification(self, status) -> None:
        pass

    async def state(self) -> str:
        return (await (await self.auto.get_child("0:CurrentState")).read_value()).Text

    async def part(self, name: str):
        return await (await self.vision.get_child([f"{self.st}:LastPart", f"{self.st}:{name}"])).read_value()

    async def prepare(self, recipe_id: str):
        return await self.recipes.call_method(f"{self.mv}:PrepareRecipe", ua.RecipeIdExternalDataType(Id=recipe_id),
                                              ua.RecipeIdInternalDataType(Id=""))

    async def call(self, name: str, *args):
        return await self.auto.call_method(f"{self.mv}:{name}", *args)

    async def single_job(self, timeout: float = 60.0):
        """StartSingleJob → wait for its ResultReady → (job id, event)."""
        job, error = await self.call("StartSingleJob", ua.MeasIdDataType(Id="m"), ua.PartIdDataType(Id=""),
                                     ua.RecipeIdExternalDataType(Id=""), ua.ProductIdDataType(Id=""))
        assert error == 0
        while True:
            event = await asyncio.wait_for(self.events.get(), timeout)
            if event.JobId == job:
                return job, event

    async def wait_recipe(self, wanted: str, timeout: float = 300.0) -> None:
        node = await self.vision.get_child([f"{self.st}:Station", f"{self.st}:ActiveRecipe"])
        deadline = time.monotonic() + timeout
        while await node.read_value() != wanted:
            assert time.monotonic() < deadline, f"recipe {await node.read_value()} still active, not {wanted}"
            await asyncio.sleep(0.1)

    async def wait_state(self, wanted: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while await self.state() != wanted:
            assert time.monotonic() < deadline, f"state {await self.state()}, expected {wanted}"
            await asyncio.sleep(0.05)


def session(station: Station, user: bool = True) -> Client:
    client = Client(station.endpoint, timeout=30)
    if user:
        client.set_user(USER)
        client.set_password(PASSWORD)
    return client


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 300))


# -- the [opcua] table -------------------------------------------------------------------------------------------
def test_table_is_checked_key_by_key(tmp_path, monkeypatch):
    monkeypatch.delenv("STATION_OPCUA_USER", raising=False)
    monkeypatch.delenv("STATION_OPCUA_PASSWORD", raising=False)
    db = tmp_path / "rejects.db"
    with pytest.raises(RecipeError, match=r"r\.toml: \[opcua\] endpont: unknown key; did you mean 'endpoint'\? known keys: endpoint, control"):
        parse_table(TableReader({"endpont": "x"}, "r.toml", "opcua", tmp_path), db)
    with pytest.raises(RecipeError, match="endpoint: 'http://x:1' is not allowed; use opc.tcp://HOST:PORT"):
        parse_table(TableReader({"endpoint": "http://x:1", "control": "observe"}, "r.toml", "opcua", tmp_path), db)
    with pytest.raises(RecipeError, match='control: .* use "plc" .* or "observe"'):
        parse_table(TableReader({"control": "auto"}, "r.toml", "opcua", tmp_path), db)
    with pytest.raises(RecipeError, match="users_file: missing; .*STATION_OPCUA_USER"):
        parse_table(TableReader({"endpoint": "opc.tcp://127.0.0.1:4840"}, "r.toml", "opcua", tmp_path), db)
    plain = tmp_path / "users.toml"
    plain.write_text('[users]\nplc = "secret"\n')
    with pytest.raises(RecipeError, match="needs a hashed password"):
        parse_table(TableReader({"users_file": str(plain)}, "r.toml", "opcua", tmp_path), db)
    with pytest.raises(RecipeError, match="security: .*sign_encrypt"):
        parse_table(TableReader({"security": ["tls"], "control": "observe"}, "r.toml", "opcua", tmp_path), db)
    with pytest.raises(RecipeError, match="recipes: .*missing.toml not found"):
        parse_table(TableReader({"recipes": ["missing.toml"], "control": "observe"}, "r.toml", "opcua", tmp_path), db)
    monkeypatch.setenv("STATION_OPCUA_USER", "plc")
    monkeypatch.setenv("STATION_OPCUA_PASSWORD", "pw")
    config = parse_table(TableReader({}, "r.toml", "opcua", tmp_path), db)
    assert (config.port, config.control.value, config.pki) == (4840, "plc", tmp_path / "opcua-pki")
    assert config.users.check("plc", "pw") and not config.users.check("plc", "nope")
    assert check_password("pw", hash_password("pw")) and not check_password("px", hash_password("pw"))


# -- the replay's triggered mode --------------------------------------------------------------------------------
def test_triggered_replay_delivers_one_file_per_trigger(tmp_path):
    for name in SMALL:
        shutil.copy(SAMPLES / name, tmp_path / name)
    source = ReplaySource(tmp_path, loop=True, triggered=True)
    got = []

    def take() -> None:
        for frame in source:
            got.append(frame.file)

    import threading

    reader = threading.Thread(target=take)
    reader.start()
    time.sleep(0.3)
    assert got == []  # nothing without a trigger
    for _ in range(4):
        source.fire_trigger()
    deadline = time.monotonic() + 10
    while len(got) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert got == [*SMALL, SMALL[0]]  # four triggers, four files, none more
    source.set_triggered(False)  # flowing: files come without triggers
    deadline = time.monotonic() + 10
    while len(got) < 12 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(got) >= 12
    with pytest.raises(SourceError, match="not in triggered mode"):
        source.fire_trigger()
    source.stop()
    reader.join(5)
    assert not reader.is_alive()


def test_bind_failure_leaves_the_line_running(station, caplog):
    """The server cannot listen (the station's own port is taken): logged, and the line runs without it."""
    recipe = station.recipe.with_overrides({"log.db": str(station.db.with_name("other.db"))})
    context = integrations.Context(recipe, recipe.log.db, recipe.station.id, new_run_id())
    wanted = integrations.configure(recipe, context)
    line = build_line(recipe)
    with caplog.at_level(logging.ERROR):
        assert integrations.start_all(wanted, line) == []
    assert "opcua did not start" in caplog.text and "cannot listen at" in caplog.text
    assert not getattr(line.source, "triggered", False)  # no PLC: the replay flows by itself
    line.max_frames = 2
    line.start()
    assert line.join(120)
    assert line.stats().inspected == 2


# -- the server ---------------------------------------------------------------------------------------------------
def test_namespace_browse_names_and_anonymous_read(station):
    async def body():
        async with session(station, user=False) as client:
            assert NAMESPACE in await client.get_namespace_array()
            plc = await Plc(client).setup(events=False)
            names = {(await n.read_browse_name()).Name for n in await plc.auto.get_children()}
            assert {"StartSingleJob", "StartContinuous", "Stop", "Abort", "CurrentState"} <= names
            names = {(await n.read_browse_name()).Name for n in await plc.vsm.get_children()}
            assert {"SelectModeAutomatic", "Reset", "Halt", "Preoperational", "Operational", "Error",
                    "Halted"} <= names
            names = {(await n.read_browse_name()).Name for n in await plc.recipes.get_children()}
            assert {"PrepareRecipe", "UnprepareRecipe"} <= names
            assert (await plc.vision.read_type_definition()) == ua.NodeId(1003, plc.mv)  # VisionSystemType
            assert await plc.state() == "Ready"  # anonymous read
            top = await (await plc.vsm.get_child("0:CurrentState")).read_value()
            assert top.Text == "Operational"
            with pytest.raises(ua.UaStatusCodeError) as refused:  # anonymous: no method call
                await plc.call("StartSingleJob", ua.MeasIdDataType(Id=""), ua.PartIdDataType(Id=""),
                               ua.RecipeIdExternalDataType(Id=""), ua.ProductIdDataType(Id=""))
            assert refused.value.code == ua.StatusCodes.BadUserAccessDenied
        wrong = Client(station.endpoint, timeout=30)
        wrong.set_user(USER)
        wrong.set_password("not-the-password")
        with pytest.raises(ua.UaStatusCodeError):
            async with wrong:
                pass

    run(body())


def test_plc_handshake_verdicts_match_the_ledger(station):
    """PrepareRecipe → StartSingleJob → ResultReady → read the verdict, 20 times; every fourth file is corrupt and
    its NOT_INSPECTED row gets its ResultReady too."""
    async def body():
        async with session(station) as client:
            plc = await Plc(client).setup()
            internal, completed, error = await plc.prepare("magnetic_tile")
            assert (internal.Id, completed, error) == ("magnetic_tile", True, 0)
            seen, seen_jobs = [], []
            for _ in range(20):
                job, event = await plc.single_job()
                seen_jobs.append(job)
                verdict, row_id = await plc.part("Verdict"), await plc.part("RowId")
                assert str(row_id) == event.ResultId
                [row] = rows(station.db, "WHERE id = ?", (row_id,))
                assert verdict == row["verdict"] == event.ResultContent[0].Value
                assert event.ResultState == {"PASS": 1, "FAIL": 2, "NOT_INSPECTED": 3}[row["verdict"]]
                assert event.PartId.Id == row["file"]
                assert await plc.state() == "Ready"
                seen.append((row["file"], row["verdict"], row["reason"]))
            assert [f for f, _, _ in seen] == [*SMALL, "zz_corrupt.jpg"] * 5
            assert {(v, r) for f, v, r in seen if f == "zz_corrupt.jpg"} == {("NOT_INSPECTED", "unreadable")}
            assert {v for f, v, _ in seen if f != "zz_corrupt.jpg"} <= {"PASS", "FAIL"}
            results = await plc.vision.get_child(f"{plc.mv}:ResultManagement")
            last = rows(station.db)[-1]
            _handle, result, error = await results.call_method(f"{plc.mv}:GetResultById", str(last["id"]),
                                                               ua.Variant(0, ua.VariantType.Int32))
            assert (result.ResultId.Id, result.ResultContent[0].Value, error) == (str(last["id"]), last["verdict"], 0)
            last_result = await (await results.get_child([f"{plc.mv}:Results", f"{plc.st}:LastResult"])).read_value()
            assert (last_result.ResultId.Id, last_result.JobId.Id) == (str(last["id"]), seen_jobs[-1])

    run(body())


def test_recipe_switch_refused_while_running_accepted_when_idle(station):
    async def body():
        async with session(station) as client:
            plc = await Plc(client).setup()
            with pytest.raises(ua.UaStatusCodeError) as unknown:
                await plc.prepare("no_such_recipe")
            assert unknown.value.code == ua.StatusCodes.BadNotFound
            await plc.call("StartContinuous", ua.MeasIdDataType(Id=""), ua.PartIdDataType(Id=""),
                           ua.RecipeIdExternalDataType(Id=""), ua.ProductIdDataType(Id=""))
            assert await plc.state() == "ContinuousExecution"
            await asyncio.wait_for(plc.events.get(), 60)  # frames flow
            with pytest.raises(ua.UaStatusCodeError) as busy:
                await plc.prepare("strict")
            assert busy.value.code == ua.StatusCodes.BadInvalidState
            await plc.call("Stop", CAUSE, "")
            await plc.wait_state("Ready", 180)  # once the parts under way have their rows
            old = station.line.judge.recipe
            _, completed, error = await plc.prepare("strict")
            assert (completed, error) == (False, 0)  # a model loads: RecipePrepared follows
            with pytest.raises(ua.UaStatusCodeError) as loading:
                await plc.call("StartSingleJob", ua.MeasIdDataType(Id=""), ua.PartIdDataType(Id=""),
                               ua.RecipeIdExternalDataType(Id=""), ua.ProductIdDataType(Id=""))
            assert loading.value.code == ua.StatusCodes.BadInvalidState
            await plc.wait_recipe("strict")
            strict = load_recipe(station.db.parent / "strict.toml")
            fingerprint = await (await plc.vision.get_child([f"{plc.st}:Station",
                                                             f"{plc.st}:ActiveRecipeFingerprint"])).read_value()
            assert fingerprint == strict.fingerprint() != station.recipe.fingerprint()
            assert await plc.state() == "Ready"
            assert station.line.inspector.rules.score_threshold == STRICT_THRESHOLD
            _, event = await plc.single_job()
            [row] = rows(station.db, "WHERE id = ?", (int(event.ResultId),))
            assert row["recipe"] == f"magnetic_tile {strict.fingerprint()}"
            with contextlib.closing(sqlite3.connect(station.db)) as con:
                change = con.execute("SELECT old_recipe, new_recipe, new_fingerprint, run_id, via FROM "
                                     "recipe_changes ORDER BY id DESC LIMIT 1").fetchone()
            assert change == (old, f"magnetic_tile {strict.fingerprint()}", strict.fingerprint(), station.run_id,
                              "opcua PrepareRecipe")
            await plc.prepare("magnetic_tile")  # back, for the other tests
            await plc.wait_recipe("magnetic_tile")
            assert station.line.judge.recipe == old

    run(body())


def test_client_gone_mid_run_does_not_stop_the_line(station):
    async def body():
        client = session(station)
        await client.connect()
        plc = await Plc(client).setup()
        await plc.call("StartContinuous", ua.MeasIdDataType(Id=""), ua.PartIdDataType(Id=""),
                       ua.RecipeIdExternalDataType(Id=""), ua.ProductIdDataType(Id=""))
        await asyncio.wait_for(plc.events.get(), 60)
        client.uaclient.protocol.transport.abort()  # the PLC's cable is pulled: no goodbye
        with contextlib.suppress(Exception):
            await client.disconnect()
        before = len(rows(station.db))
        deadline = time.monotonic() + 60
        while len(rows(station.db)) < before + 2:
            assert time.monotonic() < deadline, "the line stopped producing rows after the client went away"
            await asyncio.sleep(0.1)
        assert station.line.running
        async with session(station) as again:  # another PLC takes over and stops the flow
            plc = await Plc(again).setup(events=False)
            assert await plc.state() == "ContinuousExecution"
            await plc.call("Stop", CAUSE, "")
            await plc.wait_state("Ready", 180)
        count = len(rows(station.db))
        await asyncio.sleep(0.5)
        assert len(rows(station.db)) == count  # held again: no trigger, no part

    run(body())


def test_sign_and_encrypt_basic256sha256(station, tmp_path):
    async def body():
        from asyncua.crypto.cert_gen import setup_self_signed_certificate
        from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
        from cryptography.x509.oid import ExtendedKeyUsageOID

        key, cert = tmp_path / "plc_key.pem", tmp_path / "plc_cert.der"
        await setup_self_signed_certificate(key, cert, "urn:test:plc", "localhost",
                                            [ExtendedKeyUsageOID.CLIENT_AUTH], {"commonName": "plc"})
        client = session(station)
        client.application_uri = "urn:test:plc"
        await client.set_security(SecurityPolicyBasic256Sha256, str(cert), str(key),
                                  server_certificate=str(station.pki / "server_cert.der"),
                                  mode=ua.MessageSecurityMode.SignAndEncrypt)
        async with client:
            plc = await Plc(client).setup()
            assert client.security_policy.Mode == ua.MessageSecurityMode.SignAndEncrypt
            _, event = await plc.single_job()
            assert event.ResultContent[0].Value in ("PASS", "FAIL", "NOT_INSPECTED")

    run(body())
    assert (station.pki / "server_key.pem").stat().st_mode & 0o077 == 0  # the key is the owner's only
    status = station.active[0].status()
    assert status["serving"] and status["results_published"] == len(rows(station.db))


PLC_PROCESS = """
import asyncio, sys
from asyncua import Client, ua
async def main(endpoint, user, password):
    client = Client(endpoint, timeout=60)
    client.set_user(user)
    client.set_password(password)
    async with client:
        await client.load_data_type_definitions()  # the structures, built from the server's definitions alone
        mv = await client.get_namespace_index("http://opcfoundation.org/UA/MachineVision")
        st = await client.get_namespace_index("urn:inspection-station:opcua")
        recipes = await client.nodes.objects.get_child([f"{st}:VisionSystem", f"{mv}:RecipeManagement"])
        internal, completed, error = await recipes.call_method(
            f"{mv}:PrepareRecipe", ua.RecipeIdExternalDataType(Id="magnetic_tile"), ua.RecipeIdInternalDataType(Id=""))
        print(internal.Id, completed, error)
asyncio.run(main(*sys.argv[1:]))
"""


def test_a_plc_in_another_process_builds_the_structures(station):
    """A client that shares nothing with the server (another process) encodes the standard's structures: the server
    completes the DataTypeDefinitions the 2019 NodeSet leaves out."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", PLC_PROCESS, station.endpoint, USER, PASSWORD], capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["magnetic_tile", "True", "0"]


# -- issue 28: what the server says it is, its certificate, passwords, JobIds, sessions, the docs' claims ------------
def test_build_info_is_the_packages(station):
    """Server/ServerStatus/BuildInfo and the endpoints' ApplicationDescription name the installed package and its
    version, not asyncua's "FreeOpcUa Python Server 1.0pre"."""
    import importlib.metadata

    from station.opcua.identity import build_info

    async def body():
        async with session(station, user=False) as client:
            fields = {name: await client.get_node(ua.NodeId(getattr(ua.ObjectIds, f"Server_ServerStatus_BuildInfo_{name}"))
                                                  ).read_value()
                      for name in ("ProductName", "ManufacturerName", "SoftwareVersion", "ProductUri", "BuildNumber")}
            status = await client.get_node(ua.NodeId(ua.ObjectIds.Server_ServerStatus)).read_value()
            endpoints = await client.get_endpoints()
        return fields, status, endpoints

    fields, status, endpoints = run(body())
    expected = build_info()
    assert fields == {"ProductName": "inspection-station", "ManufacturerName": expected.manufacturer_name,
                      "SoftwareVersion": importlib.metadata.version("inspection-station"),
                      "ProductUri": expected.product_uri, "BuildNumber": expected.software_version}
    assert status.BuildInfo.SoftwareVersion == fields["SoftwareVersion"]
    assert "FreeOpcUa" not in repr(fields) + repr(status.BuildInfo)
    assert {e.Server.ProductUri for e in endpoints} == {expected.product_uri}
    assert {e.Server.ApplicationName.Text for e in endpoints} == {f"Inspection station {station.recipe.station.id}"}


def test_certificate_names_the_endpoint_and_starts_a_day_back(station):
    """The certificate a client receives holds the endpoint's IP address and the host's names in its SAN, and its
    notBefore is a day back (a PLC whose clock runs behind accepts it)."""
    import datetime as dt
    import ipaddress
    import socket

    from cryptography import x509

    async def body():
        async with session(station, user=False) as client:
            return await client.get_endpoints()

    served = {e.ServerCertificate for e in run(body()) if e.ServerCertificate}
    assert served == {(station.pki / "server_cert.der").read_bytes()}
    cert = x509.load_der_x509_certificate(served.pop())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    assert {socket.gethostname().lower(), "localhost"} <= set(san.get_values_for_type(x509.DNSName))
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        f"urn:inspection-station:{station.recipe.station.id}"]
    age = dt.datetime.now(dt.timezone.utc) - cert.not_valid_before_utc
    assert dt.timedelta(hours=23, minutes=59) < age < dt.timedelta(days=1, hours=1)
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 366


def test_password_on_the_none_endpoint_is_encrypted(station):
    """The "none" endpoint advertises the Basic256Sha256 token policy for user names: a real client encrypts the
    password with the server certificate, and the bytes on the wire (a relay in between) never hold it."""
    wire = bytearray()

    async def pump(reader, writer, keep):
        try:
            while data := await reader.read(65536):
                if keep:
                    wire.extend(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def body():
        async def relay(client_reader, client_writer):
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", station.port)
            await asyncio.gather(pump(client_reader, server_writer, True), pump(server_reader, client_writer, False))

        proxy = await asyncio.start_server(relay, "127.0.0.1", 0)
        port = proxy.sockets[0].getsockname()[1]
        try:
            client = Client(f"opc.tcp://127.0.0.1:{port}", timeout=30)
            client.set_user(USER)
            client.set_password(PASSWORD)
            async with client:
                assert client.security_policy.Mode == ua.MessageSecurityMode.None_
                plc = await Plc(client).setup(events=False)
                results = await plc.vision.get_child(f"{plc.mv}:ResultManagement")
                with pytest.raises(ua.UaStatusCodeError) as missing:  # a call: the session is the logged-in user's
                    await results.call_method(f"{plc.mv}:GetResultById", "999999999",
                                              ua.Variant(0, ua.VariantType.Int32))
                assert missing.value.code == ua.StatusCodes.BadNotFound
                endpoints = await client.get_endpoints()
        finally:
            proxy.close()
            await proxy.wait_closed()
        return endpoints

    endpoints = run(body())
    assert USER.encode() in wire  # the relay saw the login (the user name is not secret) ...
    assert PASSWORD.encode() not in wire and PASSWORD.encode("utf-16-le") not in wire  # ... but not the password
    [none] = [e for e in endpoints if e.SecurityMode == ua.MessageSecurityMode.None_]
    [token] = [t for t in none.UserIdentityTokens if t.TokenType == ua.UserTokenType.UserName]
    assert token.SecurityPolicyUri == "http://opcfoundation.org/UA/SecurityPolicy#Basic256Sha256"


def test_last_result_is_a_station_variable_of_the_standard_type(station):
    """ResultManagement/Results holds the standard's <ResultVariable> placeholder: the instance, LastResult, is named
    in the station's namespace and typed by the standard's ResultType."""
    async def body():
        async with session(station, user=False) as client:
            plc = await Plc(client).setup(events=False)
            folder = await plc.vision.get_child([f"{plc.mv}:ResultManagement", f"{plc.mv}:Results"])
            found = []
            for node in await folder.get_children():
                name = await node.read_browse_name()
                found.append((name.NamespaceIndex, name.Name, await node.read_type_definition()))
            return plc, found

    plc, found = run(body())
    assert found == [(plc.st, "LastResult", ua.NodeId(2002, plc.mv))]  # ResultType


def test_prepare_of_the_active_recipe_is_completed_before_it_returns(station):
    """OPC 40100-1 7.5.2.2: IsCompleted says the recipe was prepared before the method returned. The active recipe
    is: true, with its RecipePrepared event; another recipe loads after the answer (false; see the switch test)."""
    async def body():
        async with session(station) as client:
            plc = await Plc(client).setup(events=False)
            prepared: asyncio.Queue = asyncio.Queue()

            class Events:
                def event_notification(self, event):
                    prepared.put_nowait(event)

            sub = await client.create_subscription(5, Events())
            await sub.subscribe_events(client.nodes.server, ua.NodeId(1022, plc.mv))  # RecipePreparedEventType
            internal, completed, error = await plc.prepare("magnetic_tile")
            assert (internal.Id, completed, error) == ("magnetic_tile", True, 0)
            event = await asyncio.wait_for(prepared.get(), 30)
            assert event.InternalId.Id == "magnetic_tile" and await plc.state() == "Ready"

    run(body())


def test_job_id_is_the_same_wherever_a_result_is_read(station):
    """ResultReady, GetResultById, LastResult and LastPart give the same JobId for a row (GetResultById gave an
    empty one)."""
    async def body():
        async with session(station) as client:
            plc = await Plc(client).setup()
            results = await plc.vision.get_child(f"{plc.mv}:ResultManagement")
            answered = [await plc.single_job() for _ in range(2)]
            for job, event in answered:
                assert event.JobId == job
                _handle, result, error = await results.call_method(f"{plc.mv}:GetResultById", event.ResultId,
                                                                   ua.Variant(0, ua.VariantType.Int32))
                assert (result.ResultId.Id, result.JobId.Id, error) == (event.ResultId, job, 0)
                # the ResultId typed as the method declares it, a ResultIdDataType (node-opcua builds its arguments
                # from InputArguments; a bare int(str(...)) of the structure answered BadNotFound)
                _handle, typed, error = await results.call_method(
                    f"{plc.mv}:GetResultById", ua.Variant(ua.ResultIdDataType(Id=event.ResultId),
                                                          ua.VariantType.ExtensionObject),
                    ua.Variant(0, ua.VariantType.Int32))
                assert (typed.ResultId.Id, typed.JobId.Id, error) == (event.ResultId, job, 0)
            last = await (await results.get_child([f"{plc.mv}:Results", f"{plc.st}:LastResult"])).read_value()
            assert (last.ResultId.Id, last.JobId.Id) == (answered[-1][1].ResultId, answered[-1][0])
            assert (str(await plc.part("RowId")), await plc.part("JobId")) == (answered[-1][1].ResultId,
                                                                               answered[-1][0])

    run(body())


class Gate:
    """The frame guard of the line's judge, holding each part the inspection thread has taken at its first check
    until the test opens the gate: a part stays in flight for as long as the test needs, whatever the machine's speed
    (a bundled frame is judged in tens of milliseconds, faster than an OPC UA round trip; the corrupt one is refused
    at once). The thread waits in its queue's ``get`` before the gate is set, so the gate cannot sit there; the
    judge is switched to one with this guard (the thread reads its judge per frame)."""

    def __init__(self, guard) -> None:
        self.guard = guard
        self.opened = threading.Event()
        self.holding = threading.Event()  # a part waits at the gate

    def __getattr__(self, name: str):
        return getattr(self.guard, name)

    def refuse(self, frame):
        if not self.opened.is_set():
            self.holding.set()
            if not self.opened.wait(60):
                raise TimeoutError("the test never opened the gate")
        return self.guard.refuse(frame)

    async def wait_holding(self, what: str) -> None:
        deadline = time.monotonic() + 30
        while not self.holding.is_set():
            assert time.monotonic() < deadline, f"{what}: no part reached the inspection"
            await asyncio.sleep(0.002)

    def close(self) -> None:
        self.holding.clear()
        self.opened.clear()


async def single_job_in_flight(plc: Plc, gate: Gate) -> str:
    """Start single jobs until one's part is held at the gate (in flight); returns its JobId. The corrupt file is
    recorded as it is read, on the acquisition thread: its job ends at once, and the next one takes a readable
    frame."""
    for _ in range(len(SMALL) + 2):
        job, _error = await plc.call("StartSingleJob", ua.MeasIdDataType(Id="m"), ua.PartIdDataType(Id=""),
                                     ua.RecipeIdExternalDataType(Id=""), ua.ProductIdDataType(Id=""))
        deadline = time.monotonic() + 30
        while not gate.holding.is_set():
            assert time.monotonic() < deadline, "the single job's part neither reached the inspection nor got a row"
            if not plc.events.empty():  # recorded when read, never in flight
                event = plc.events.get_nowait()
                assert event.JobId == job
                await plc.wait_state("Ready")
                break
            await asyncio.sleep(0.002)
        else:
            return job
    raise AssertionError("no single job's part reached the inspection")


def test_parts_in_flight_at_abort_keep_their_job(station):
    """Abort answers at once (Ready); the parts already taken still get their rows, and each ResultReady carries
    the JobId of the job that took it: a single job, then a continuous one."""
    judge = station.line.judge
    gate = Gate(judge.guard or station.line.guard)
    station.line.switch(dataclasses.replace(judge, guard=gate))

    async def body():
        async with session(station) as client:
            plc = await Plc(client).setup()
            job = await single_job_in_flight(plc, gate)
            await plc.call("Abort", CAUSE, "")
            assert await plc.state() == "Ready"
            gate.opened.set()
            event = await asyncio.wait_for(plc.events.get(), 60)
            assert event.JobId == job

            flow, _ = await plc.call("StartContinuous", ua.MeasIdDataType(Id=""), ua.PartIdDataType(Id=""),
                                     ua.RecipeIdExternalDataType(Id=""), ua.ProductIdDataType(Id=""))
            events = [await asyncio.wait_for(plc.events.get(), 60)]
            gate.close()
            await gate.wait_holding("the continuous job")
            await plc.call("Abort", CAUSE, "")
            ledger_at_abort = rows(station.db)[-1]["id"]
            assert await plc.state() == "Ready"
            gate.opened.set()
            while True:  # the rows of the parts in flight
                try:
                    events.append(await asyncio.wait_for(plc.events.get(), 5))
                except asyncio.TimeoutError:
                    break
            late = [e for e in events if int(e.ResultId) > ledger_at_abort]
            assert late, "no part was in flight at Abort: nothing checked"
            assert {e.JobId for e in events} == {flow}
            assert [int(e.ResultId) for e in events] == [r["id"] for r in rows(station.db)
                                                         if r["id"] >= int(events[0].ResultId)]

    try:
        run(body())
    finally:
        gate.opened.set()
        station.line.switch(judge)


def test_a_failed_login_on_the_channel_leaves_the_plc_session_alone(station):
    """A second session on the PLC's own secure channel fails to log in: the PLC's session reads and calls on
    (asyncua alone answered BadSessionNotActivated; tests/station/test_opcua_sessions.py)."""
    from tests.station.test_opcua_sessions import second_session

    async def body():
        async with session(station) as client:
            plc = await Plc(client).setup(events=False)
            failed, _ = await second_session(client, USER, "not-the-password")
            assert failed is None
            assert await plc.state() == "Ready"
            _internal, completed, error = await plc.prepare("magnetic_tile")  # a call: still the PLC's user
            assert (completed, error) == (True, 0)

    run(body())


def test_state_machine_methods_and_halt(station):
    """Unprepare, Reset, SelectModeAutomatic, Prepare, Abort, then Halt, which ends the run (the module's last test)."""
    async def body():
        async with session(station) as client:
            plc = await Plc(client).setup(events=False)
            await plc.recipes.call_method(f"{plc.mv}:UnprepareRecipe", ua.RecipeIdExternalDataType(Id=""),
                                          ua.RecipeIdInternalDataType(Id=""))
            assert await plc.state() == "Initialized"
            with pytest.raises(ua.UaStatusCodeError) as refused:
                await plc.call("StartSingleJob", ua.MeasIdDataType(Id=""), ua.PartIdDataType(Id=""),
                               ua.RecipeIdExternalDataType(Id=""), ua.ProductIdDataType(Id=""))
            assert refused.value.code == ua.StatusCodes.BadInvalidState
            error = await (await plc.vision.get_child([f"{plc.st}:Station", f"{plc.st}:LastError"])).read_value()
            assert "StartSingleJob" in error and "Initialized" in error
            await plc.vsm.call_method(f"{plc.mv}:Reset", CAUSE, "")
            top = await plc.vsm.get_child("0:CurrentState")
            assert (await top.read_value()).Text == "Preoperational"
            await plc.vsm.call_method(f"{plc.mv}:SelectModeAutomatic")
            assert ((await top.read_value()).Text, await plc.state()) == ("Operational", "Initialized")
            _, completed, _ = await plc.prepare("magnetic_tile")
            assert completed and await plc.state() == "Ready"
            await plc.call("StartContinuous", ua.MeasIdDataType(Id=""), ua.PartIdDataType(Id=""),
                           ua.RecipeIdExternalDataType(Id=""), ua.ProductIdDataType(Id=""))
            await plc.call("Abort", CAUSE, "")
            assert await plc.state() == "Ready"
            await plc.vsm.call_method(f"{plc.mv}:Halt", CAUSE, "")
            assert (await top.read_value()).Text == "Halted"
            assert station.line.join(120)  # the run ends, as on Ctrl-C: drained, every part recorded
            closing = station.close_in_background()  # as `station run` does next
            await asyncio.sleep(1.0)
            assert closing.is_alive()  # the server waits for the PLC ...
            assert (await top.read_value()).Text == "Halted"  # ... which reads Halted after the run ended
            async with session(station, user=False) as other:  # reachable for another client too
                assert (await (await other.nodes.objects.get_child(
                    [f"{plc.st}:VisionSystem", f"{plc.mv}:VisionStateMachine", "0:CurrentState"])).read_value()
                        ).Text == "Halted"
            with pytest.raises(ua.UaStatusCodeError) as ended:
                await plc.vsm.call_method(f"{plc.mv}:Reset", CAUSE, "")
            assert ended.value.code == ua.StatusCodes.BadInvalidState
            disconnected = time.monotonic()
        closing.join(30)  # the PLC disconnected: the server stops, the station exits (well before halt_timeout_s)
        assert not closing.is_alive() and time.monotonic() - disconnected < 10
        assert station.line.stats().refused == 0

    run(body())


def test_observe_mode_reports_every_row(tmp_path):
    """control = "observe": the replay flows by itself, each ledger row has its ResultReady, PLC methods refused."""
    observed = Station(tmp_path, control="observe")
    try:
        async def body():
            async with session(observed) as client:
                plc = await Plc(client).setup()
                assert await plc.state() == "ContinuousExecution"
                events = [await asyncio.wait_for(plc.events.get(), 120) for _ in range(5)]
                ids = [int(e.ResultId) for e in events]
                ledger = {r["id"]: r["verdict"] for r in rows(observed.db)}
                assert ids == sorted(ids) and all(ledger[i] == e.ResultContent[0].Value for i, e in zip(ids, events))
                assert "NOT_INSPECTED" in {e.ResultContent[0].Value for e in events}  # the corrupt file, 4th
                with pytest.raises(ua.UaStatusCodeError) as refused:
                    await plc.call("StartSingleJob", ua.MeasIdDataType(Id=""), ua.PartIdDataType(Id=""),
                                   ua.RecipeIdExternalDataType(Id=""), ua.ProductIdDataType(Id=""))
                assert refused.value.code == ua.StatusCodes.BadInvalidState

        run(body())
    finally:
        report = observed.close()
    assert report["opcua"]["results_published"] == len(rows(observed.db))
