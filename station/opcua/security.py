"""Who may do what on the OPC UA server: anonymous sessions read, users call methods (the certificate and the trust
list: :mod:`station.opcua.certificates`)."""
from __future__ import annotations

import logging
import socket
from typing import Any

from asyncua import ua
from asyncua.crypto.permission_rules import USER_TYPES, SimpleRoleRuleset, User, UserRole

from station.opcua import OpcUaConfig, Security

log = logging.getLogger(__name__)

SECURITY_POLICIES = {Security.NONE: ua.SecurityPolicyType.NoSecurity,
                     Security.SIGN: ua.SecurityPolicyType.Basic256Sha256_Sign,
                     Security.SIGN_ENCRYPT: ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt}


class StationRules(SimpleRoleRuleset):
    """Anonymous sessions browse, read and subscribe; calling methods and writing need a logged-in user."""

    def __init__(self) -> None:
        super().__init__()
        user = set(map(ua.NodeId, USER_TYPES))
        refused = {ua.NodeId(ua.ObjectIds.CallRequest_Encoding_DefaultBinary),
                   ua.NodeId(ua.ObjectIds.WriteRequest_Encoding_DefaultBinary)}
        self._permission_dict[UserRole.Anonymous] = user - refused


class StationUsers:
    """asyncua user manager: the users of the ``[opcua]`` table, anonymous when allowed."""

    def __init__(self, config: OpcUaConfig) -> None:
        self.config = config

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        if username is None and password is None:
            return User(role=UserRole.Anonymous) if self.config.allow_anonymous else None
        if self.config.users.check(username, password):
            return User(role=UserRole.User, name=username)
        log.warning("OPC UA login refused for user %r (wrong name or password)", username)
        return None


def check_port(config: OpcUaConfig) -> None:
    """Raise :class:`OSError` saying what to do when the endpoint's port cannot be bound (taken, no such address)."""
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(config.host, config.port,
                                                                  type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's server does
            probe.bind(address)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot listen at {config.endpoint} ({exc.strerror or exc}); stop the program "
                                 "using that port or choose another with [opcua] endpoint / --opcua") from None
