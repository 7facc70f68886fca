"""F25: per-connection memory stays bounded and small.  permessage-deflate (offered by every
browser) costs ~100 KB of zlib state per session on Hypercorn, so the service does not
negotiate it unless TETHER_WS_DEFLATE asks; when asked, a compressed session works end to end."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Message, RejectConnection, Request, TextMessage
from wsproto.extensions import PerMessageDeflate

from tests.support.session import ALLOWED_ORIGIN, SessionReplica, Stack, check_server_frame
from tests.support.waiting import scaled


@pytest.fixture(scope="module")
def deflating(stack: Stack) -> SessionReplica:
    return stack.add_replica({"TETHER_WS_DEFLATE": "true"})


async def handshake_offering_deflate(replica: SessionReplica) -> tuple[trio.SocketStream, WSConnection, list[str]]:
    url = urlsplit(replica.ws_url)
    assert url.hostname is not None
    assert url.port is not None
    stream = await trio.open_tcp_stream(url.hostname, url.port)
    conn = WSConnection(ConnectionType.CLIENT)
    request = Request(
        host=f"{url.hostname}:{url.port}",
        target="/v1/ws",
        extensions=[PerMessageDeflate()],
        extra_headers=[(b"origin", ALLOWED_ORIGIN.encode())],
    )
    await stream.send_all(conn.send(request))
    with trio.fail_after(scaled(10)):
        while True:
            data = await stream.receive_some(65536)
            assert data, "the server closed the socket during the handshake"
            conn.receive_data(data)
            for event in conn.events():
                if isinstance(event, AcceptConnection):
                    return stream, conn, [ext.name for ext in event.extensions]
                assert not isinstance(event, RejectConnection), event


async def init_and_ready(stack: Stack, stream: trio.SocketStream, conn: WSConnection) -> dict[str, object]:
    user = stack.make_user()
    project = await stack.create_project(user.api_key, "deflate")
    token = await stack.token(user.api_key)
    init = {"type": "init", "v": 1, "token": token, "project": {"id": project["id"]}, "client_id": "deflate"}
    await stream.send_all(conn.send(Message(data=json.dumps(init))))
    text: list[str] = []
    with trio.fail_after(scaled(10)):
        while True:
            data = await stream.receive_some(65536)
            assert data, "closed before ready"
            conn.receive_data(data)
            for event in conn.events():
                if isinstance(event, TextMessage):
                    text.append(event.data)
                    if event.message_finished:
                        return check_server_frame("".join(text))


@pytest.mark.trio
async def test_F25_permessage_deflate_offered_by_the_client_is_not_negotiated_by_default(stack: Stack) -> None:
    stream, conn, extensions = await handshake_offering_deflate(stack.session)
    async with stream:
        assert extensions == []
        ready = await init_and_ready(stack, stream, conn)
        assert ready["type"] == "ready"


@pytest.mark.trio
async def test_F25_permessage_deflate_when_enabled_is_negotiated_and_the_session_works(
    stack: Stack, deflating: SessionReplica
) -> None:
    stream, conn, extensions = await handshake_offering_deflate(deflating)
    async with stream:
        assert extensions == ["permessage-deflate"]
        ready = await init_and_ready(stack, stream, conn)
        assert ready["type"] == "ready"
