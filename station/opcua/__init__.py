"""OPC UA for Machine Vision (OPC 40100-1): the station as a vision system a PLC drives over OPC UA.

The recipe's ``[opcua]`` table (or ``station run --opcua opc.tcp://HOST:PORT``) starts an asyncua server on its own
thread and asyncio loop, serving the standard's namespace ``http://opcfoundation.org/UA/MachineVision`` from the
published NodeSet (``station/opcua_nodeset/``): a ``VisionSystem`` object with its state machine, the methods a PLC
calls, JobStarted / Ready / ResultReady events (one ResultReady for every ledger row) and the last result.

    [opcua]
    endpoint = "opc.tcp://0.0.0.0:4840"   # where the server listens
    control = "plc"                       # "plc": the PLC triggers each part; "observe": the line runs by itself
    users_file = "/etc/station/opcua-users.toml"
    recipes = ["../recipes/other_product.toml"]   # what PrepareRecipe may switch to, beside the shipped recipes
    security = ["none", "sign", "sign_encrypt"]  # the endpoints offered (Basic256Sha256 for sign / sign_encrypt)
    pki = "station-data/opcua-pki"        # the server's certificate and key, made on first start; the trust list
    allow_anonymous = true                # anonymous sessions may browse, read and subscribe (never call)
    certificate = "/etc/station/opcua/cert.der"   # the plant's own certificate and key instead of the station's
    private_key = "/etc/station/opcua/key.pem"    #   (both or neither; used as they are, never replaced)
    trust_clients = false                 # true: only client certificates in <pki>/trusted/certs may open sessions
    halt_timeout_s = 30.0                 # after Halt, the server stays up until the PLC disconnects, at most this

The users file holds ``name = "scrypt$<salt>$<hash>"`` lines under ``[users]`` (``python -m station.opcua
hash-password NAME`` prints one); ``STATION_OPCUA_USER`` / ``STATION_OPCUA_PASSWORD`` in the environment add one
user. Passwords are never taken from the command line. docs/INTEGRATION.md has the PLC sequence and the settings.
"""
from __future__ import annotations

import enum
import getpass
import hashlib
import hmac
import logging
import os
import secrets
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlparse

from station.errors import RecipeError
from station.recipe import Refused, TableReader, check_bool, check_float, check_path, check_str

log = logging.getLogger(__name__)

NAMESPACE = "http://opcfoundation.org/UA/MachineVision"
NODESET = Path(__file__).resolve().parent.parent / "opcua_nodeset" / "Opc.Ua.MachineVision.NodeSet2.xml"
USER_ENV, PASSWORD_ENV = "STATION_OPCUA_USER", "STATION_OPCUA_PASSWORD"
DEFAULT_ENDPOINT = "opc.tcp://0.0.0.0:4840"


class Control(str, enum.Enum):
    """Who runs the line: the PLC (each part on StartSingleJob, or StartContinuous) or the line itself."""

    PLC = "plc"
    OBSERVE = "observe"


class Security(str, enum.Enum):
    """An endpoint the server offers: no security, Basic256Sha256 Sign, or Basic256Sha256 Sign & Encrypt."""

    NONE = "none"
    SIGN = "sign"
    SIGN_ENCRYPT = "sign_encrypt"


# -- users -------------------------------------------------------------------------------------------------------
def hash_password(password: str, salt: bytes | None = None) -> str:
    """The users-file form of a password: ``scrypt$<salt hex>$<hash hex>``."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2 ** 14, r=8, p=1, dklen=32)
    return f"scrypt${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str) -> bool:
    """True when ``password`` matches a :func:`hash_password` value (constant-time comparison)."""
    try:
        kind, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        return hmac.compare_digest(hash_password(password, bytes.fromhex(salt)).split("$")[2], digest)
    except ValueError:
        return False


@dataclass(frozen=True)
class Users:
    """Who may call methods: ``hashed`` from the users file, plus one plain user from the environment."""

    hashed: Mapping[str, str] = field(default_factory=dict)
    env_user: str | None = None
    env_password: str | None = field(default=None, repr=False)

    def check(self, name: str | None, password: str | None) -> bool:
        if not name or password is None:
            return False
        if self.env_user is not None and name == self.env_user and self.env_password is not None:
            if hmac.compare_digest(password.encode(), self.env_password.encode()):
                return True
        stored = self.hashed.get(name)
        return stored is not None and check_password(password, stored)

    def __bool__(self) -> bool:
        return bool(self.hashed) or (self.env_user is not None and self.env_password is not None)


def read_users(path: Path | None, where: str) -> Users:
    """The users file (if any) and the environment's user; raises :class:`RecipeError` for a bad file."""
    hashed: dict[str, str] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RecipeError(f"{where} users_file: {path} not found; create it with lines from `python -m "
                              "station.opcua hash-password NAME` under [users]") from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise RecipeError(f"{where} users_file: cannot read {path} ({exc}); it is TOML: [users] then "
                              'name = "scrypt$..." lines') from None
        users = data.get("users")
        if not isinstance(users, dict) or not users:
            raise RecipeError(f"{where} users_file: {path} has no [users] table; add [users] and name = \"scrypt$...\""
                              " lines (python -m station.opcua hash-password NAME prints one)")
        for name, value in users.items():
            if not isinstance(value, str) or not value.startswith("scrypt$") or value.count("$") != 2:
                raise RecipeError(f"{where} users_file: {path}: user {name!r} needs a hashed password "
                                  "\"scrypt$<salt>$<hash>\" (python -m station.opcua hash-password NAME), never plain "
                                  "text")
            hashed[str(name)] = value
    return Users(hashed, os.environ.get(USER_ENV) or None, os.environ.get(PASSWORD_ENV))


# -- the [opcua] table -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OpcUaConfig:
    """The checked ``[opcua]`` table (see the module docstring for each key)."""

    endpoint: str
    host: str
    port: int
    control: Control
    users: Users
    recipes: tuple[Path, ...]
    security: tuple[Security, ...]
    pki: Path
    allow_anonymous: bool
    certificate: Path | None = None
    private_key: Path | None = None
    trust_clients: bool = False
    halt_timeout_s: float = 30.0


KEYS = ("endpoint", "control", "users_file", "recipes", "security", "pki", "allow_anonymous", "certificate",
        "private_key", "trust_clients", "halt_timeout_s")


def _endpoint(value: Any) -> tuple[str, str, int]:
    url = urlparse(check_str(value))
    try:
        port = url.port
    except ValueError:
        port = None
    if url.scheme != "opc.tcp" or not url.hostname or port is None:
        raise ValueError
    return value, url.hostname, port


def _recipe_files(base: Path) -> Any:
    def check(value: Any) -> tuple[Path, ...]:
        if not isinstance(value, list):
            raise ValueError
        paths = tuple(check_path(base)(r) for r in value)
        for path in paths:
            if not path.is_file():
                raise Refused(f"{path} not found; list recipe files that exist (relative paths start at {base})")
        return paths
    return check


def _existing_file(base: Path) -> Any:
    def check(value: Any) -> Path:
        path = check_path(base)(value)
        if not path.is_file():
            raise Refused(f"{path} not found (relative paths start at {base})")
        return path
    return check


def _policies(value: Any) -> tuple[Security, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError
    return tuple(dict.fromkeys(Security(s) for s in value))


def parse_table(t: TableReader, db_path: Path) -> OpcUaConfig:
    """Check every key of ``[opcua]``; raises :class:`RecipeError` naming the key and what is allowed."""
    endpoint, host, port = t.get("endpoint", _endpoint(DEFAULT_ENDPOINT), _endpoint,
                                 f"opc.tcp://HOST:PORT, e.g. {DEFAULT_ENDPOINT} (all interfaces) or "
                                 "opc.tcp://127.0.0.1:4840")
    control = t.get("control", Control.PLC, Control,
                    '"plc" (the PLC triggers parts) or "observe" (the line runs by itself)')
    users_path = t.get("users_file", None, check_path(t.base),
                       'the path of a TOML file with a [users] table, e.g. "/etc/station/opcua-users.toml"')
    users = read_users(users_path, f"{t.where}: [{t.name}]")
    recipes = t.get("recipes", (), _recipe_files(t.base),
                    'a list of recipe files, e.g. ["other_product.toml"] (relative to this recipe)')
    policies = t.get("security", tuple(Security), _policies,
                     'a non-empty list of "none", "sign", "sign_encrypt" (Basic256Sha256)')
    pki = t.get("pki", None, check_str, 'a folder for the server certificate and key, e.g. "station-data/opcua-pki"')
    anonymous = t.get("allow_anonymous", True, check_bool, "true (anonymous sessions may browse and read) or false")
    certificate = t.get("certificate", None, _existing_file(t.base),
                        'the plant\'s certificate for this station (DER or PEM), e.g. "/etc/station/opcua/cert.der"')
    private_key = t.get("private_key", None, _existing_file(t.base),
                        'its private key (PEM, unencrypted, readable by the station only), e.g. '
                        '"/etc/station/opcua/key.pem"')
    trust_clients = t.get("trust_clients", False, check_bool,
                          "true (only client certificates in <pki>/trusted/certs may open sessions) or false")
    halt_timeout_s = t.get("halt_timeout_s", 30.0, check_float(0.0, high=3600.0),
                           "seconds from 0 to 3600 the server stays up after Halt for the PLC to disconnect")
    t.finish()
    if (certificate is None) != (private_key is None):
        raise t.fail("private_key" if private_key is None else "certificate",
                     "missing; the plant's certificate needs both certificate and private_key")
    if (certificate is not None or trust_clients) and policies == (Security.NONE,):
        raise t.fail("security", '["none"] alone uses no certificate; add "sign_encrypt" (or "sign") for '
                                 "certificate or trust_clients to matter")
    if control is Control.PLC and not users:
        raise t.fail("users_file", f'missing; with control = "plc" a PLC must log in to call methods: set users_file '
                                   f"(lines from `python -m station.opcua hash-password NAME`) or the environment "
                                   f'variables {USER_ENV} and {PASSWORD_ENV}, or set control = "observe"')
    return OpcUaConfig(endpoint=endpoint, host=host, port=port, control=control, users=users, recipes=recipes,
                       security=policies,
                       pki=Path(pki).expanduser() if pki is not None else db_path.parent / "opcua-pki",
                       allow_anonymous=anonymous, certificate=certificate, private_key=private_key,
                       trust_clients=trust_clients, halt_timeout_s=halt_timeout_s)


def from_table(t: TableReader, context: Any):
    """The OPC UA integration the ``[opcua]`` table asks for (checked, not started); see
    :mod:`station.integrations`."""
    from station.opcua.integration import OpcUaIntegration

    config = parse_table(t, Path(context.db_path))
    return OpcUaIntegration(config, context)


def main(argv: list[str] | None = None) -> int:
    """``python -m station.opcua hash-password NAME``: read a password (twice, not echoed) and print the users-file
    line."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "hash-password":
        print("usage: python -m station.opcua hash-password NAME   (prints a line for the [users] table of the "
              "users_file)", file=sys.stderr)
        return 2
    password = getpass.getpass(f"password for {args[1]}: ")
    if not password or password != getpass.getpass("again: "):
        print("the passwords are empty or differ; nothing printed", file=sys.stderr)
        return 1
    print(f'{args[1]} = "{hash_password(password)}"')
    return 0
