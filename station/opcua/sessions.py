"""Several sessions on one secure channel, each served as itself: a workaround for asyncua (2.1.0).

OPC UA lets a client open several sessions on one secure channel (OPC 10000-4 5.6); every request names its
session by the ``AuthenticationToken`` in its header. asyncua's server keeps one session per connection instead
(``UaProcessor.session``): each CreateSession replaces it, and every later request on the channel, whatever token
it carries, is served by the session created last. So a second login on a channel takes the first session over:
when that login fails, the first, logged-in session answers ``BadSessionNotActivated`` (or ``BadUserAccessDenied``)
from then on; when it succeeds, the first session's requests run as the second session's user.
``tests/station/test_opcua_sessions.py`` shows it on a bare asyncua server (docs/INTEGRATION.md has the
reproduction).

:class:`SessionRouter` keeps the channel's sessions by token and serves each request with the session it names:
an unknown token answers ``BadSessionIdInvalid``; an ActivateSession for a session of another channel is left to
asyncua (session transfer); Publish requests answer the subscriptions of their own session; a lost connection
closes every session of the channel that asyncua would close. :class:`StationServer` is asyncua's ``Server`` with
connections that use it.
"""
from __future__ import annotations

import logging
import time
from contextvars import ContextVar
from typing import Any

from asyncua import Server, ua
from asyncua.common.utils import ServiceError
from asyncua.crypto import uacrypto
from asyncua.server.binary_server_asyncio import BinaryServer, OPCUAProtocol
from asyncua.server.uaprocessor import UaProcessor

log = logging.getLogger(__name__)

_CREATE = ua.NodeId(ua.ObjectIds.CreateSessionRequest_Encoding_DefaultBinary)
_ACTIVATE = ua.NodeId(ua.ObjectIds.ActivateSessionRequest_Encoding_DefaultBinary)
_CLOSE = ua.NodeId(ua.ObjectIds.CloseSessionRequest_Encoding_DefaultBinary)
_PUBLISH = ua.NodeId(ua.ObjectIds.PublishRequest_Encoding_DefaultBinary)
#: requests that need no session
_SESSIONLESS = {ua.NodeId(i) for i in (ua.ObjectIds.FindServersRequest_Encoding_DefaultBinary,
                                        ua.ObjectIds.GetEndpointsRequest_Encoding_DefaultBinary,
                                        ua.ObjectIds.RegisterServerRequest_Encoding_DefaultBinary,
                                        ua.ObjectIds.RegisterServer2Request_Encoding_DefaultBinary)}


#: The user name of the session whose request is being served, for a method handler to say who called it (a promotion
#: names who prepared the recipe); None for an anonymous session and outside a request.
CALLER: ContextVar[str | None] = ContextVar("opcua_caller", default=None)


class SessionRouter(UaProcessor):
    """asyncua's per-connection processor, serving each request with the session its token names."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sessions: dict[ua.NodeId, Any] = {}  # this channel's sessions, by authentication token

    async def _process_message(self, typeid, requesthdr, seqhdr, body):
        if typeid in _SESSIONLESS:
            return await super()._process_message(typeid, requesthdr, seqhdr, body)
        if typeid == _CREATE:
            try:
                return await super()._process_message(typeid, requesthdr, seqhdr, body)
            finally:
                if self.session is not None:
                    self.sessions[self.session.auth_token] = self.session
                self._settle()
        token = requesthdr.AuthenticationToken
        own = self.sessions.get(token)
        if own is None and typeid != _ACTIVATE:
            self._settle()
            raise ServiceError(ua.StatusCodes.BadSessionIdInvalid)
        self.session = own  # None: an ActivateSession moving a session of another channel here (asyncua's lookup)
        caller = CALLER.set(getattr(getattr(own, "user", None), "name", None))
        try:
            if typeid == _PUBLISH and len(self.sessions) > 1:
                return await self._publish_own(token, typeid, requesthdr, seqhdr, body)
            return await super()._process_message(typeid, requesthdr, seqhdr, body)
        finally:
            if typeid == _ACTIVATE and self.session is not None:
                self.sessions[self.session.auth_token] = self.session
            elif typeid == _CLOSE:
                self.sessions.pop(token, None)
                if self.sessions:
                    self._closing = False  # the channel's other sessions go on
            self._settle()
            CALLER.reset(caller)

    def _settle(self) -> None:
        """Leave ``session`` on an activated session of the channel when there is one: asyncua's watchdogs (an
        unactivated connection is closed) look at it between requests."""
        if self.session is not None and self.session.is_activated() and \
                self.session.auth_token in self.sessions:
            return
        active = [s for s in self.sessions.values() if s.is_activated()]
        self.session = active[-1] if active else next(reversed(self.sessions.values()), None)

    # -- publishing: each session's Publish requests answer its own subscriptions ---------------------------------
    def _owner(self, subscription_id: Any) -> Any:
        sub = self.iserver.subscription_service.subscriptions.get(subscription_id)
        if sub is None:
            return None
        return next((t for t, s in self.sessions.items() if s.session_id == sub.session_id), None)

    async def _publish_own(self, token, typeid, requesthdr, seqhdr, body):
        waiting = self._publish_results_subs
        self._publish_results_subs = {sid: True for sid in waiting if self._owner(sid) == token}
        others = {sid: True for sid in waiting if sid not in self._publish_results_subs}
        try:
            return await super()._process_message(typeid, requesthdr, seqhdr, body)
        finally:
            self._publish_results_subs.update(others)

    def get_publish_request(self, subscription_id):
        token = self._owner(subscription_id)
        if token is None or len(self.sessions) < 2:
            return super().get_publish_request(subscription_id)
        now = time.monotonic()
        for data in list(self._publish_requests):
            if data.requesthdr.AuthenticationToken != token:
                continue
            self._publish_requests.remove(data)
            if data.has_timed_out(now):
                self._send_publish_request_timeout(data)
                continue
            return data
        self._publish_results_subs[subscription_id] = True
        return None

    async def close(self):
        others = [s for s in self.sessions.values() if s is not self.session]
        await super().close()
        for session in others:
            self.session = session
            try:
                if self._should_close_session_on_transport_loss():
                    await session.close_session(True)
            except Exception:  # noqa: BLE001 - one session that does not close never keeps the others open
                log.exception("OPC UA: session %s not closed with its connection", session)


class _Protocol(OPCUAProtocol):
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if self.processor is not None:  # accepted: serve it with the router (its message loop has not run yet)
            self.processor = SessionRouter(self.iserver, self.transport, self.limits)
            self.processor.set_policies(self.policies)


class _BinaryServer(BinaryServer):
    def _make_protocol(self) -> OPCUAProtocol:
        return _Protocol(iserver=self.iserver, policies=self._policies, clients=self.clients,
                         closing_tasks=self.closing_tasks, limits=self.limits)


class StationServer(Server):
    """asyncua's ``Server`` whose connections serve each session as itself (:class:`SessionRouter`)."""

    async def start(self) -> None:
        # Server.start of asyncua 2.1.0, with the BinaryServer above (tests/station/test_opcua_sessions.py pins it)
        if self.iserver.certificate is not None:
            uacrypto.check_certificate(self.iserver.certificate, self._application_uri, None)
        await self._setup_server_nodes()
        await self.iserver.start()
        try:
            host, port = self._get_bind_socket_info()
            self.bserver = _BinaryServer(self.iserver, host, port, self.limits)
            self.bserver.set_policies(self._policies)
            await self.bserver.start()
        except Exception:
            await self.iserver.stop()
            raise

    def connections(self) -> int:
        """Client connections open now."""
        return len(self.bserver.clients) if self.bserver is not None else 0
