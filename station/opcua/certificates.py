"""The OPC UA server's certificate and the trust list for client certificates.

- **The station's own certificate** (:func:`ensure_certificate`): self-signed, RSA 2048, SHA-256, made in the
  ``pki`` folder on first start. Its subject alternative names hold the application URI and every host name and IP
  address the endpoint can be reached at (all interfaces for ``0.0.0.0``), and ``notBefore`` is a day back, so a PLC
  whose clock runs behind accepts it. It is made again (same key) when it no longer covers those names, expires
  within :data:`RENEW_DAYS`, or names another application URI.
- **The plant's certificate** (:func:`load_plant_certificate`): ``[opcua] certificate`` and ``private_key``, used as
  they are and never replaced; the application URI becomes the certificate's.
- **The trust list** (:class:`ClientTrustList`, ``[opcua] trust_clients = true``): the standard directory store of
  OPC 10000-12 Annex F under ``pki``: a client certificate is accepted when it (or the CA that signed it) is in
  ``trusted/certs`` and not revoked by a CRL in ``trusted/crl``; a refused one is copied to ``rejected/certs``, from
  where an administrator moves it to ``trusted/certs`` (read again at each new session, no restart).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import logging
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from station.errors import StationError

log = logging.getLogger(__name__)

VALID_DAYS = 365
RENEW_DAYS = 30  # a certificate expiring sooner is made again at start
BACKDATE = dt.timedelta(days=1)
KEY_FILE, CERT_FILE = "server_key.pem", "server_cert.der"
WILDCARDS = {"0.0.0.0", "::", ""}


# -- the names the endpoint answers to -----------------------------------------------------------------------------
@dataclass(frozen=True)
class EndpointNames:
    """Host names and IP addresses a client may use to reach the endpoint: what the certificate's SAN must hold."""

    dns: tuple[str, ...]
    ips: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]

    def missing_from(self, cert: x509.Certificate) -> list[str]:
        """The names and addresses ``cert``'s SAN lacks (all of them when it has no SAN)."""
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            have_dns = {n.lower() for n in san.get_values_for_type(x509.DNSName)}
            have_ips = set(san.get_values_for_type(x509.IPAddress))
        except x509.ExtensionNotFound:
            have_dns, have_ips = set(), set()
        return ([n for n in self.dns if n.lower() not in have_dns]
                + [str(ip) for ip in self.ips if ip not in have_ips])


def _interface_addresses() -> list[str]:
    """Every address of this machine's interfaces (psutil when installed; else what the host name resolves to)."""
    try:
        import psutil
    except ImportError:
        psutil = None
    found: list[str] = []
    if psutil is not None:
        for addresses in psutil.net_if_addrs().values():
            found += [a.address for a in addresses if a.family in (socket.AF_INET, socket.AF_INET6)]
    else:
        try:
            found += [info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)]
        except OSError:
            pass
    return found + ["127.0.0.1", "::1"]


def _resolve(host: str) -> list[str]:
    try:
        return [info[4][0] for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)]
    except OSError:
        return []


def endpoint_names(host: str) -> EndpointNames:
    """What a client may type to reach an endpoint on ``host``: for ``0.0.0.0`` / ``::`` every interface's address,
    ``localhost`` and the host name; for an address, that address; for a name, the name and what it resolves to.
    The machine's host name (and its fully qualified name) are always included."""
    hostname = socket.gethostname()
    dns = [hostname, socket.getfqdn()]
    addresses: list[str] = []
    try:
        literal = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        literal = None
    if host in WILDCARDS:
        dns.append("localhost")
        addresses = _interface_addresses()
    elif literal is not None:
        addresses = [str(literal)]
        if literal.is_loopback:
            dns.append("localhost")
    else:
        dns.insert(0, host)
        addresses = _resolve(host)
    ips = []
    for text in addresses:
        try:
            ip = ipaddress.ip_address(text.split("%")[0])
        except ValueError:
            continue
        if ip.is_link_local:  # fe80::/10 needs an interface scope a URL cannot carry
            continue
        if ip not in ips:
            ips.append(ip)
    names = [n for n in dict.fromkeys(d.lower() for d in dns if d) if n != "localhost.localdomain"]
    return EndpointNames(tuple(names), tuple(sorted(ips, key=lambda ip: (ip.version, int(ip)))))


# -- the station's own certificate -----------------------------------------------------------------------------------
def make_certificate(key: rsa.RSAPrivateKey, app_uri: str, names: EndpointNames, days: int = VALID_DAYS,
                     now: dt.datetime | None = None) -> x509.Certificate:
    """A self-signed OPC UA application instance certificate (OPC 10000-6 6.2.2) for server and client use, valid
    from a day before ``now`` (clocks that run behind) for ``days`` days."""
    now = now or dt.datetime.now(dt.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"inspection station {names.dns[0]}"[:64]),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "inspection station")])
    serial = x509.random_serial_number()
    san = ([x509.UniformResourceIdentifier(app_uri)] + [x509.DNSName(n) for n in names.dns]
           + [x509.IPAddress(ip) for ip in names.ips])
    public = key.public_key()
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(public)
               .serial_number(serial).not_valid_before(now - BACKDATE).not_valid_after(now + dt.timedelta(days=days))
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier(
                   x509.SubjectKeyIdentifier.from_public_key(public).digest, [x509.DirectoryName(subject)], serial),
                   critical=False)
               .add_extension(x509.SubjectAlternativeName(san), critical=False)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=False)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=True,
                                            data_encipherment=True, key_agreement=False, key_cert_sign=True,
                                            crl_sign=False, encipher_only=False, decipher_only=False), critical=False)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                     ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    return builder.sign(key, hashes.SHA256())


def _why_renew(cert: x509.Certificate, app_uri: str, names: EndpointNames, now: dt.datetime) -> str | None:
    if cert.not_valid_after_utc - now < dt.timedelta(days=RENEW_DAYS):
        return f"it expires on {cert.not_valid_after_utc:%Y-%m-%d}"
    if cert.not_valid_before_utc > now - BACKDATE + dt.timedelta(minutes=1):
        return "its notBefore is not back-dated"
    try:
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if app_uri not in uris:
        return f"it names another application URI ({', '.join(uris) or 'none'}, not {app_uri})"
    missing = names.missing_from(cert)
    if missing:
        return f"its subject alternative names lack {', '.join(missing)}"
    return None


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def ensure_certificate(folder: Path, app_uri: str, names: EndpointNames) -> tuple[Path, Path]:
    """The station's key (``server_key.pem``, owner-only) and certificate (``server_cert.der``) in ``folder``: made
    on first start, made again (same key) when they no longer fit (see the module docstring). Returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = folder / KEY_FILE, folder / CERT_FILE
    if key_path.is_file():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_private(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
        cert_path.unlink(missing_ok=True)  # a new key: the old certificate is of no use
    os.chmod(key_path, 0o600)
    now = dt.datetime.now(dt.timezone.utc)
    why = "there is none"
    if cert_path.is_file():
        try:
            old = x509.load_der_x509_certificate(cert_path.read_bytes())
            why = _why_renew(old, app_uri, names, now) if old.public_key() == key.public_key() else \
                "it does not belong to the key"
        except ValueError as exc:
            why = f"it cannot be read ({exc})"
        if why is not None:
            log.warning("OPC UA: the server certificate %s is made again because %s; PLCs that trusted the old "
                        "one must trust the new %s", cert_path, why, cert_path)
    if why is not None:
        cert = make_certificate(key, app_uri, names, now=now)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
        log.info("OPC UA server certificate %s: %s, valid %s .. %s", cert_path, ", ".join(
            names.dns + tuple(str(ip) for ip in names.ips)), cert.not_valid_before_utc.date(),
            cert.not_valid_after_utc.date())
    return key_path, cert_path


# -- the plant's certificate ---------------------------------------------------------------------------------------
def _read_certificate(data: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(data) if data.lstrip().startswith(b"-----BEGIN") else \
        x509.load_der_x509_certificate(data)


def _read_key(data: bytes) -> Any:
    return serialization.load_pem_private_key(data, password=None) if data.lstrip().startswith(b"-----BEGIN") \
        else serialization.load_der_private_key(data, password=None)


def load_plant_certificate(cert_path: Path, key_path: Path, names: EndpointNames) -> tuple[bytes, bytes, str | None]:
    """The plant's certificate (DER) and key (PEM) as the server loads them, and the application URI its SAN names
    (None: none). Raises :class:`StationError` saying what to fix: unreadable files, a key that is not the
    certificate's, a non-RSA key, a certificate outside its validity. Host names the SAN lacks are logged."""
    try:
        cert = _read_certificate(Path(cert_path).read_bytes())
    except (OSError, ValueError) as exc:
        raise StationError(f"[opcua] certificate: cannot read {cert_path} ({exc}); give a DER or PEM X.509 "
                           "certificate") from None
    try:
        key = _read_key(Path(key_path).read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise StationError(f"[opcua] private_key: cannot read {key_path} ({exc}); give an unencrypted PEM or DER "
                           "private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise StationError(f"[opcua] private_key: {key_path} is not an RSA key; Basic256Sha256 needs RSA "
                           "(2048 to 4096 bits)")
    if cert.public_key() != key.public_key():
        raise StationError(f"[opcua] private_key: {key_path} is not the key of the certificate {cert_path}")
    now = dt.datetime.now(dt.timezone.utc)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise StationError(f"[opcua] certificate: {cert_path} is valid only from {cert.not_valid_before_utc} to "
                           f"{cert.not_valid_after_utc}; renew it (or check this machine's clock)")
    try:
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    missing = names.missing_from(cert)
    if missing:
        log.warning("OPC UA: the plant certificate %s does not name %s; a PLC that checks the host it connects to "
                    "will refuse it there", cert_path, ", ".join(missing))
    if not uris:
        log.warning("OPC UA: the plant certificate %s has no application URI in its subject alternative names; "
                    "most clients refuse such a certificate", cert_path)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.DER), pem, (uris[0] if uris else None)


# -- the trust list --------------------------------------------------------------------------------------------------
def thumbprint(cert: x509.Certificate) -> str:
    """The certificate's SHA-1 thumbprint, upper-case hex (how OPC UA tools name certificates)."""
    return hashlib.sha1(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()  # noqa: S324 - a name


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else "certificate"


class ClientTrustList:
    """asyncua certificate validator (``Server.set_certificate_validator``): the client certificate of each new
    session must be valid now, name the client's application URI and be trusted (itself, or its CA, in
    ``trusted/certs``), and not be revoked (``trusted/crl``). A refused certificate is copied to ``rejected/certs``
    as ``<CN> [<thumbprint>].der``."""

    def __init__(self, pki: Path) -> None:
        self.trusted = Path(pki) / "trusted" / "certs"
        self.crl = Path(pki) / "trusted" / "crl"
        self.rejected = Path(pki) / "rejected" / "certs"
        for folder in (self.trusted, self.crl, self.rejected):
            folder.mkdir(parents=True, exist_ok=True)

    async def __call__(self, cert: x509.Certificate, description: Any) -> None:
        from asyncua import ua
        from asyncua.common.utils import ServiceError

        refusal = await self.check(cert, getattr(description, "ApplicationUri", None))
        if refusal is not None:
            status, why = refusal
            where = self.reject(cert)
            log.warning("OPC UA: client certificate %r (%s) refused: %s; copied to %s (move it to %s to trust it)",
                        _common_name(cert), getattr(description, "ApplicationUri", "?"), why, where, self.trusted)
            raise ServiceError(getattr(ua.StatusCodes, status))

    async def check(self, cert: x509.Certificate, app_uri: str | None) -> tuple[str, str] | None:
        """None when trusted; else (status code name, why)."""
        now = dt.datetime.now(dt.timezone.utc)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            return "BadCertificateTimeInvalid", (f"valid only from {cert.not_valid_before_utc} to "
                                                 f"{cert.not_valid_after_utc}")
        try:
            uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
                x509.UniformResourceIdentifier)
        except x509.ExtensionNotFound:
            uris = []
        if app_uri and app_uri not in uris:
            return "BadCertificateUriInvalid", f"the client says it is {app_uri}, the certificate names {uris}"
        if self._revoked(cert):
            return "BadCertificateRevoked", f"revoked by a CRL in {self.crl}"
        der = cert.public_bytes(serialization.Encoding.DER)
        for trusted in self._certificates():
            if trusted.public_bytes(serialization.Encoding.DER) == der:
                return None
            if trusted.subject == cert.issuer and self._issued_by(cert, trusted):
                return None
        return "BadCertificateUntrusted", f"not in the trust list {self.trusted}"

    def _certificates(self) -> list[x509.Certificate]:
        found = []
        for path in sorted(self.trusted.iterdir()):
            if path.is_file():
                try:
                    found.append(_read_certificate(path.read_bytes()))
                except (OSError, ValueError):
                    log.warning("OPC UA trust list: %s is not a certificate; ignored", path)
        return found

    @staticmethod
    def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
        """``issuer`` is a CA (basicConstraints cA) that signed ``cert``."""
        try:
            if not issuer.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
                return False
            cert.verify_directly_issued_by(issuer)
            return True
        except (x509.ExtensionNotFound, ValueError, TypeError, InvalidSignature):
            return False

    def _revoked(self, cert: x509.Certificate) -> bool:
        for path in sorted(self.crl.iterdir()):
            if not path.is_file():
                continue
            try:
                data = path.read_bytes()
                crl = x509.load_pem_x509_crl(data) if data.lstrip().startswith(b"-----BEGIN") else \
                    x509.load_der_x509_crl(data)
            except (OSError, ValueError):
                log.warning("OPC UA trust list: %s is not a certificate revocation list; ignored", path)
                continue
            if crl.issuer == cert.issuer and crl.get_revoked_certificate_by_serial_number(cert.serial_number):
                return True
        return False

    def reject(self, cert: x509.Certificate) -> Path:
        """Copy ``cert`` (DER) to ``rejected/certs``; returns its path."""
        name = re.sub(r"[^A-Za-z0-9 ._-]", "_", _common_name(cert))[:64]
        path = self.rejected / f"{name} [{thumbprint(cert)}].der"
        if not path.exists():
            path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
        return path
