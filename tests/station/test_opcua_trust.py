"""The plant's own certificate, the trust list for client certificates, and Halt, with real asyncua clients over
loopback: a real line served on Basic256Sha256 Sign & Encrypt only (the plant's certificate authority, made here,
issues the station's certificate and one PLC's; another PLC has a self-signed certificate that an administrator
trusts by moving it from ``rejected/certs`` to ``trusted/certs``), and a `station run` process that a PLC halts."""
from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import shutil
import socket
import time
from pathlib import Path

import pytest

asyncua = pytest.importorskip("asyncua")
from asyncua import Client, ua  # noqa: E402
from asyncua.crypto.cert_gen import setup_self_signed_certificate  # noqa: E402
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402

from station.opcua.certificates import thumbprint  # noqa: E402
from tests.station.test_opcua import CAUSE, PASSWORD, USER, Plc, Station, run  # noqa: E402

PLANT_URI = "urn:plant:line3:vision"


class Authority:
    """The plant's CA: issues certificates and revokes them."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "plant CA")])
        now = dt.datetime.now(dt.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                                  key_encipherment=False, data_encipherment=False,
                                                  key_agreement=False, key_cert_sign=True, crl_sign=True,
                                                  encipher_only=False, decipher_only=False), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.revoked: list[int] = []

    def issue(self, folder: Path, name: str, uri: str, server: bool) -> tuple[Path, Path, x509.Certificate]:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = dt.datetime.now(dt.timezone.utc)
        names = [x509.UniformResourceIdentifier(uri)]
        if server:
            names += [x509.DNSName(socket.gethostname()), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                .issuer_name(self.name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
                .add_extension(x509.SubjectAlternativeName(names), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=True,
                                             data_encipherment=True, key_agreement=False, key_cert_sign=False,
                                             crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(self.key, hashes.SHA256()))
        cert_path, key_path = folder / f"{name}.der", folder / f"{name}.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return cert_path, key_path, cert

    def crl(self) -> bytes:
        now = dt.datetime.now(dt.timezone.utc)
        builder = (x509.CertificateRevocationListBuilder().issuer_name(self.name).last_update(now)
                   .next_update(now + dt.timedelta(days=1)))
        for serial in self.revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build())
        return builder.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def plant(tmp_path_factory):
    root = tmp_path_factory.mktemp("opcua-trust")
    ca = Authority()
    certs = root / "certs"
    certs.mkdir()
    cert, key, _ = ca.issue(certs, "station", PLANT_URI, server=True)
    station = Station(root, certificate=str(cert), private_key=str(key), trust_clients=True,
                      security=["sign_encrypt"], halt_timeout_s=3.0)
    station.ca, station.certs, station.plant_cert = ca, certs, cert
    yield station
    station.close()


async def plc_client(plant: Station, cert: Path, key: Path, uri: str) -> Client:
    client = Client(plant.endpoint, timeout=30)
    client.application_uri = uri
    client.set_user(USER)
    client.set_password(PASSWORD)
    await client.set_security(SecurityPolicyBasic256Sha256, str(cert), str(key),
                              server_certificate=str(plant.plant_cert), mode=ua.MessageSecurityMode.SignAndEncrypt)
    return client


async def self_signed(folder: Path, name: str, uri: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}_key.pem", folder / f"{name}_cert.der"
    await setup_self_signed_certificate(key, cert, uri, "localhost", [ExtendedKeyUsageOID.CLIENT_AUTH],
                                        {"commonName": name})
    return cert, key


def test_the_plants_certificate_is_served_as_it_is(plant):
    cert, key = run(self_signed(plant.certs, "plc-probe", "urn:test:probe"))
    trusted = plant.pki / "trusted" / "certs"
    shutil.copy(cert, trusted / "plc-probe.der")

    async def body():
        client = await plc_client(plant, cert, key, "urn:test:probe")
        async with client:
            served = client.security_policy.peer_certificate
            endpoints = await client.get_endpoints()
        return served, endpoints

    served, endpoints = run(body())
    assert served == plant.plant_cert.read_bytes()  # not a certificate the station made
    assert {e.Server.ApplicationUri for e in endpoints} == {PLANT_URI}  # the application URI is the certificate's
    assert not (plant.pki / "server_cert.der").exists()


def test_trust_list_refuses_then_trusts_a_client(plant):
    """An unknown self-signed PLC certificate is refused and copied to rejected/certs; moved to trusted/certs by an
    administrator, the same PLC logs in (no restart). A CA-signed PLC is trusted through its CA; revoked, refused."""
    cert, key = run(self_signed(plant.certs, "plc-a", "urn:test:plc-a"))
    der = x509.load_der_x509_certificate(cert.read_bytes())

    async def connect(*args) -> str:
        async with await plc_client(plant, *args) as client:
            plc = await Plc(client).setup(events=False)
            return await plc.state()

    with pytest.raises(ua.UaStatusCodeError) as refused:
        run(connect(cert, key, "urn:test:plc-a"))
    assert refused.value.code == ua.StatusCodes.BadCertificateUntrusted
    [rejected] = (plant.pki / "rejected" / "certs").glob(f"* [[]{thumbprint(der)}[]].der")  # "<CN> [<SHA-1>].der"
    assert rejected.read_bytes() == cert.read_bytes()
    shutil.move(rejected, plant.pki / "trusted" / "certs" / rejected.name)  # the administrator trusts it
    assert run(connect(cert, key, "urn:test:plc-a")) == "Ready"

    issued, issued_key, issued_cert = plant.ca.issue(plant.certs, "plc-b", "urn:test:plc-b", server=False)
    with pytest.raises(ua.UaStatusCodeError) as unknown_ca:
        run(connect(issued, issued_key, "urn:test:plc-b"))
    assert unknown_ca.value.code == ua.StatusCodes.BadCertificateUntrusted
    (plant.pki / "trusted" / "certs" / "plant-ca.der").write_bytes(
        plant.ca.cert.public_bytes(serialization.Encoding.DER))
    assert run(connect(issued, issued_key, "urn:test:plc-b")) == "Ready"  # through its CA
    plant.ca.revoked.append(issued_cert.serial_number)
    (plant.pki / "trusted" / "crl" / "plant-ca.crl").write_bytes(plant.ca.crl())
    with pytest.raises(ua.UaStatusCodeError) as revoked:
        run(connect(issued, issued_key, "urn:test:plc-b"))
    assert revoked.value.code == ua.StatusCodes.BadCertificateRevoked
    with pytest.raises(ua.UaStatusCodeError) as wrong_uri:  # a certificate that names another application
        run(connect(cert, key, "urn:test:someone-else"))
    assert wrong_uri.value.code == ua.StatusCodes.BadCertificateUriInvalid


def test_halt_serves_until_the_timeout_when_the_plc_stays(plant):
    """After Halt and the end of the run, a PLC that stays connected keeps the server up for halt_timeout_s (3 s
    here); then the server stops and the station exits."""
    cert, key = run(self_signed(plant.certs, "plc-c", "urn:test:plc-c"))
    shutil.copy(cert, plant.pki / "trusted" / "certs" / "plc-c.der")

    async def body():
        client = await plc_client(plant, cert, key, "urn:test:plc-c")
        async with client:
            plc = await Plc(client).setup(events=False)
            top = await plc.vsm.get_child("0:CurrentState")
            await plc.vsm.call_method(f"{plc.mv}:Halt", CAUSE, "")
            assert plant.line.join(120)
            closing = plant.close_in_background()
            started = time.monotonic()
            await asyncio.sleep(1.0)
            assert closing.is_alive() and (await top.read_value()).Text == "Halted"
            while closing.is_alive():  # the PLC stays connected
                await asyncio.sleep(0.1)
                assert time.monotonic() - started < 20, "the server did not stop after halt_timeout_s"
            assert time.monotonic() - started >= 2.5
            with pytest.raises(Exception):  # noqa: B017 - the server is gone: any error the client gives
                await asyncio.wait_for(top.read_value(), 10)

    run(body())


def test_the_stations_certificate_is_made_again_when_it_no_longer_fits(tmp_path):
    """A certificate of an earlier version (asyncua's helper: no IP address, notBefore = now) is made again with
    the same key; one that fits is kept as it is (PLCs that trust it go on trusting it)."""
    from station.opcua.certificates import endpoint_names, ensure_certificate

    names = endpoint_names("0.0.0.0")  # every interface: each address a PLC may connect to
    key, cert = tmp_path / "server_key.pem", tmp_path / "server_cert.der"
    run(setup_self_signed_certificate(key, cert, "urn:inspection-station:x", socket.gethostname(),
                                      [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
                                      {"commonName": "x"}))
    old, old_key = cert.read_bytes(), key.read_bytes()
    ensure_certificate(tmp_path, "urn:inspection-station:x", names)
    made = cert.read_bytes()
    assert made != old and key.read_bytes() == old_key
    new = x509.load_der_x509_certificate(made)
    assert names.missing_from(new) == []
    ips = new.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.IPAddress)
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        for addresses in psutil.net_if_addrs().values():
            for a in addresses:
                if a.family in (socket.AF_INET, socket.AF_INET6):
                    ip = ipaddress.ip_address(a.address.split("%")[0])
                    assert ip.is_link_local or ip in ips, f"{ip} missing from the certificate"
    assert new.not_valid_before_utc < dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=23)
    ensure_certificate(tmp_path, "urn:inspection-station:x", names)
    assert cert.read_bytes() == made  # it fits: kept
    ensure_certificate(tmp_path, "urn:inspection-station:y", names)
    assert cert.read_bytes() != made  # another station id: made again
    assert key.stat().st_mode & 0o077 == 0


def test_certificate_keys_of_the_table(tmp_path, monkeypatch):
    from station.errors import RecipeError
    from station.opcua import parse_table
    from station.recipe import TableReader

    monkeypatch.setenv("STATION_OPCUA_USER", "plc")
    monkeypatch.setenv("STATION_OPCUA_PASSWORD", "pw")
    db = tmp_path / "rejects.db"
    cert, key = tmp_path / "cert.der", tmp_path / "key.pem"
    cert.write_bytes(b"x")
    key.write_bytes(b"x")

    def table(**keys):
        return parse_table(TableReader(keys, "r.toml", "opcua", tmp_path), db)

    with pytest.raises(RecipeError, match="private_key: missing; the plant's certificate needs both"):
        table(certificate="cert.der")
    with pytest.raises(RecipeError, match=r"certificate: 'nope.der' is not allowed; .*nope.der not found"):
        table(certificate="nope.der", private_key="key.pem")
    with pytest.raises(RecipeError, match=r'security: \["none"\] alone uses no certificate'):
        table(trust_clients=True, security=["none"])
    with pytest.raises(RecipeError, match="halt_timeout_s: -1 is not allowed; use seconds from 0 to 3600"):
        table(halt_timeout_s=-1)
    config = table(certificate="cert.der", private_key="key.pem", trust_clients=True, halt_timeout_s=5)
    assert (config.certificate, config.private_key, config.trust_clients, config.halt_timeout_s) == (
        cert, key, True, 5.0)
    assert (table().trust_clients, table().halt_timeout_s, table().certificate) == (False, 30.0, None)


@pytest.mark.slow
def test_halt_ends_station_run_once_the_plc_has_disconnected(tmp_path):
    """`station run --opcua`, as a user starts it: Halt over OPC UA ends the run, the PLC still reads Halted from
    the server, and the process exits (status 0) when the PLC disconnects, not before."""
    import json
    import os
    import subprocess
    import sys

    from tests.station.test_opcua import small_frames
    from tests.station.waiting import free_port, wait_until

    frames = small_frames(tmp_path)
    port = free_port()
    env = dict(os.environ, STATION_OPCUA_USER=USER, STATION_OPCUA_PASSWORD=PASSWORD,
               PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    station = subprocess.Popen(
        [sys.executable, "-m", "station.cli", "run", "--source", f"replay:{frames}", "--headless", "--threads", "1",
         "--db", str(tmp_path / "rejects.db"), "--opcua", f"opc.tcp://127.0.0.1:{port}", "--json"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def listening() -> bool:
            assert station.poll() is None, station.communicate()[1][-3000:]
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_until(listening, 240, "the station's OPC UA server listening")

        async def plc() -> float:
            client = Client(f"opc.tcp://127.0.0.1:{port}", timeout=60)
            client.set_user(USER)
            client.set_password(PASSWORD)
            async with client:
                p = await Plc(client).setup()
                await p.single_job(timeout=120)
                top = await p.vsm.get_child("0:CurrentState")
                await p.vsm.call_method(f"{p.mv}:Halt", CAUSE, "")
                await asyncio.sleep(3.0)  # the run has ended by now (a drain of one idle line)
                assert station.poll() is None, "the station exited while the PLC was still connected"
                assert (await top.read_value()).Text == "Halted"
                return time.monotonic()

        disconnected = run(plc())
        station.wait(60)
        assert time.monotonic() - disconnected < 20  # well before halt_timeout_s (30 s)
    finally:
        if station.poll() is None:
            station.kill()
        out, err = station.communicate(timeout=60)
    assert station.returncode == 0, err[-3000:]
    summary = json.loads(out)
    assert summary["integrations"]["opcua"]["state"] == "Halted"
