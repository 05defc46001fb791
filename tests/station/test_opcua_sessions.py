"""Several sessions on one secure channel: asyncua 2.1.0 serves every request of a channel with the session created
last on it (a failed login then turns a logged-in session into BadSessionNotActivated); the station's server
serves each request with the session its AuthenticationToken names (station/opcua/sessions.py).

Real asyncua clients over loopback, against a bare asyncua server and the station's. A client opens a second
session on its own channel the way node-opcua's ``client.createSession()`` does: CreateSession and ActivateSession
again on the same connection; the test then switches the token it sends between the two sessions.
"""
from __future__ import annotations

import asyncio
import contextlib
import inspect

import pytest

asyncua = pytest.importorskip("asyncua")
from asyncua import Client, Server, ua  # noqa: E402
from asyncua.crypto.permission_rules import User, UserRole  # noqa: E402
from asyncua.ua.ua_binary import struct_from_binary  # noqa: E402

from station.opcua.security import StationRules  # noqa: E402
from station.opcua.sessions import SessionRouter, StationServer  # noqa: E402
from tests.station.waiting import free_port  # noqa: E402

USER, PASSWORD = "plc", "line-3-secret"


class Users:
    def get_user(self, iserver, username=None, password=None, certificate=None):
        if username is None and password is None:
            return User(role=UserRole.Anonymous)
        return User(role=UserRole.User, name=username) if (username, password) == (USER, PASSWORD) else None


@contextlib.asynccontextmanager
async def serving(server_class):
    """A bare server of ``server_class`` with a method only users may call (anonymous sessions read)."""
    port = free_port()
    server = server_class(user_manager=Users())
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity], permission_ruleset=StationRules())
    server.set_identity_tokens([ua.UserNameIdentityToken, ua.AnonymousIdentityToken])
    ns = await server.register_namespace("urn:test")
    obj = await server.nodes.objects.add_object(ns, "Thing")

    async def ping(parent):
        return [ua.Variant("pong", ua.VariantType.String)]

    await obj.add_method(ns, "Ping", ping, [], [ua.VariantType.String])
    async with server:
        yield f"opc.tcp://127.0.0.1:{port}", ns


async def second_session(client: Client, username: str | None, password: str | None):
    """Open a second session on ``client``'s channel; returns (its token or None when its login failed, the
    first session's token). The client is left sending the first session's token."""
    first = client.uaclient.protocol.authentication_token
    await client.create_session()
    second = client.uaclient.protocol.authentication_token
    try:
        await client.activate_session(username=username, password=password)
    except ua.UaStatusCodeError:
        second = None
    client.uaclient.protocol.authentication_token = first
    return second, first


async def ping(client: Client, ns: int) -> str:
    thing = await client.nodes.objects.get_child(f"{ns}:Thing")
    return await thing.call_method(f"{ns}:Ping")


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def test_asyncua_serves_every_request_with_the_last_session_of_the_channel():
    """The library's behaviour the workaround exists for (the minimal reproduction of docs/INTEGRATION.md). When
    this test fails, asyncua serves each session as itself: station/opcua/sessions.py can go."""
    async def body():
        async with serving(Server) as (endpoint, ns):
            client = Client(endpoint, timeout=30)
            client.set_user(USER)
            client.set_password(PASSWORD)
            async with client:
                assert await ping(client, ns) == "pong"
                failed, _ = await second_session(client, USER, "wrong")  # a failed login on the same channel
                assert failed is None
                with pytest.raises(ua.UaStatusCodeError) as broken:  # ... and the logged-in session is gone
                    await client.nodes.server_state.read_value()
                assert broken.value.code == ua.StatusCodes.BadSessionNotActivated  # what the integrator saw

    run(body())


def test_each_session_of_a_channel_is_served_as_itself():
    async def body():
        async with serving(StationServer) as (endpoint, ns):
            client = Client(endpoint, timeout=30)
            client.set_user(USER)
            client.set_password(PASSWORD)
            async with client:
                assert await ping(client, ns) == "pong"
                failed, first = await second_session(client, USER, "wrong")
                assert failed is None
                assert await client.nodes.server_state.read_value() == ua.ServerState.Running
                assert await ping(client, ns) == "pong"  # still the logged-in user
                anonymous, first = await second_session(client, None, None)  # a second, anonymous session
                assert anonymous is not None
                assert await ping(client, ns) == "pong"  # the first session is not downgraded
                client.uaclient.protocol.authentication_token = anonymous
                assert await client.nodes.server_state.read_value() == ua.ServerState.Running  # anonymous reads
                with pytest.raises(ua.UaStatusCodeError) as refused:  # ... and runs as itself: no call
                    await ping(client, ns)
                assert refused.value.code == ua.StatusCodes.BadUserAccessDenied
                client.uaclient.protocol.authentication_token = ua.NodeId(b"not-a-session", 0,
                                                                          ua.NodeIdType.ByteString)
                with pytest.raises(ua.UaStatusCodeError) as unknown:
                    await client.nodes.server_state.read_value()
                assert unknown.value.code == ua.StatusCodes.BadSessionIdInvalid
                client.uaclient.protocol.authentication_token = anonymous
                await client.uaclient.session.close_session(True)  # the anonymous one closes; the first goes on
                client.uaclient.protocol.authentication_token = first
                assert await ping(client, ns) == "pong"

    run(body())


async def _send(client: Client, token, request, response_class):
    protocol = client.uaclient.protocol
    protocol.authentication_token = token
    response = struct_from_binary(response_class, await protocol.send_request(request, 10))
    response.ResponseHeader.ServiceResult.check()
    return response


async def subscribe(client: Client, token) -> int:
    """A subscription of the session ``token`` names, on the server's clock (it changes every second)."""
    request = ua.CreateSubscriptionRequest()
    request.Parameters = ua.CreateSubscriptionParameters(
        RequestedPublishingInterval=50, RequestedLifetimeCount=600, RequestedMaxKeepAliveCount=2,
        MaxNotificationsPerPublish=0, PublishingEnabled=True, Priority=0)
    sid = (await _send(client, token, request, ua.CreateSubscriptionResponse)).Parameters.SubscriptionId
    item = ua.MonitoredItemCreateRequest()
    item.ItemToMonitor.NodeId = ua.NodeId(ua.ObjectIds.Server_ServerStatus_CurrentTime)
    item.ItemToMonitor.AttributeId = ua.AttributeIds.Value
    item.MonitoringMode = ua.MonitoringMode.Reporting
    item.RequestedParameters = ua.MonitoringParameters(ClientHandle=sid, SamplingInterval=100, QueueSize=1,
                                                       DiscardOldest=True)
    create = ua.CreateMonitoredItemsRequest()
    create.Parameters = ua.CreateMonitoredItemsParameters(SubscriptionId=sid, ItemsToCreate=[item],
                                                          TimestampsToReturn=ua.TimestampsToReturn.Both)
    await _send(client, token, create, ua.CreateMonitoredItemsResponse)
    return sid


async def publish(client: Client, token) -> int:
    """One Publish request of the session ``token`` names: the subscription its answer is for."""
    return (await _send(client, token, ua.PublishRequest(), ua.PublishResponse)).Parameters.SubscriptionId


@pytest.mark.parametrize("server_class", [Server, StationServer], ids=["asyncua", "station"])
def test_each_session_publishes_its_own_subscriptions(server_class):
    """Two sessions of one channel, a subscription each: a Publish request of one session answers its own
    subscription only (asyncua answers either with either; the station's server does not)."""
    async def body():
        async with serving(server_class) as (endpoint, ns):
            client = Client(endpoint, timeout=30)
            client.set_user(USER)
            client.set_password(PASSWORD)
            async with client:
                anonymous, first = await second_session(client, None, None)
                mine = {first: await subscribe(client, first), anonymous: await subscribe(client, anonymous)}
                answered = [(token, await publish(client, token)) for token in [anonymous] * 4 + [first] * 4]
                client.uaclient.protocol.authentication_token = first
        return mine, answered

    mine, answered = run(body())
    if server_class is Server:
        assert any(sid != mine[token] for token, sid in answered), "asyncua now publishes per session"
    else:
        assert [sid for _, sid in answered] == [mine[token] for token, _ in answered]


def test_the_station_server_is_asyncuas_with_the_router():
    """StationServer.start repeats asyncua 2.1.0's Server.start with its own BinaryServer: pin what it copies, and
    that each connection gets the router."""
    source = inspect.getsource(Server.start)
    for line in ("await self._setup_server_nodes()", "await self.iserver.start()",
                 "self._get_bind_socket_info()", "BinaryServer(self.iserver, ipaddress, port, self.limits)",
                 "self.bserver.set_policies(self._policies)", "await self.bserver.start()"):
        assert line in source, f"asyncua's Server.start changed ({line!r} is gone): update StationServer.start"

    async def body():
        async with serving(StationServer) as (endpoint, ns):
            server_side = []
            async with Client(endpoint, timeout=30) as client:
                await client.nodes.server_state.read_value()
                server_side = [c.processor for c in (await _server_of(endpoint)).bserver.clients]
            assert server_side and all(isinstance(p, SessionRouter) for p in server_side)

    _servers.clear()
    original = StationServer.start

    async def start(self):
        _servers.append(self)
        await original(self)

    StationServer.start = start
    try:
        run(body())
    finally:
        StationServer.start = original


_servers: list = []


async def _server_of(endpoint: str):
    return next(s for s in _servers if str(s.endpoint.port) in endpoint)
