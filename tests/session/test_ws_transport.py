"""What happens below the session, at the WebSocket layer (``tether_kit.hypercorn_adapter``).

A foreign client can send what no WebSocket library would: a text frame that is not UTF-8 is
written here by hand.  Each close the server decides at that layer reaches the client as a close
frame with the WebSocket code that says why (1007 and 1002 here; 1009 for a message above the server's cap:
``test_handshake.py``), and the ``ws_close`` line names it at warning level (F01).  A close the
client starts is logged with the code the client sent (F40), so a normal close, a close frame
without a code and a dropped link are three different lines.
"""

from __future__ import annotations

import os
import struct
from typing import Any

import pytest
import trio
from wsproto.events import CloseConnection

from tests.support.auth import UserCredentials
from tests.support.rawws import RawWs
from tests.support.session import Stack
from tests.support.waiting import scaled

from .helpers import NewConnection, close_lines, init_frame

NOT_UTF8 = b'{"type":"init","v":1,"client_id":"\xff\xfe"}'


def masked_text_frame(payload: bytes, *, opcode: int = 0x1) -> bytes:
    """One final frame as a client must send it (masked), whatever its payload and opcode: wsproto
    and every WebSocket library refuse to send a text frame that is not UTF-8, or a reserved opcode."""
    assert len(payload) < 126, "a short frame: one length byte"
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload)) + mask + masked


async def _see_eof(raw: RawWs, *, reply: bool) -> None:
    """The server ends the TCP connection after its close frame: on the client's close reply, or
    (``reply=False``) a little later by itself."""
    if reply:
        await raw._send(raw.conn.send(CloseConnection(code=1007)))
    with trio.fail_after(scaled(10)):
        rest = await raw.sock.recv(65536)
    assert rest == b"", rest


async def _ready_raw(stack: Stack) -> tuple[RawWs, dict[str, Any], UserCredentials, dict[str, Any]]:
    """A raw socket whose session is ready (INIT answered): the socket, ``ready``, its user and project."""
    user = stack.make_user()
    project = await stack.create_project(user.api_key, "transport")
    raw = await RawWs.connect(stack.session.ws_url)
    await raw.send(init_frame(await stack.token(user.api_key), {"id": project["id"]}))
    ready = await raw.recv_frame()
    assert ready["type"] == "ready", ready
    return raw, ready, user, project


BEFORE_INIT = {
    # a text frame that is not UTF-8
    "invalid_utf8": (masked_text_frame(NOT_UTF8), 1007),
    # any other violation of RFC 6455: here a reserved, non-control opcode
    "protocol_error": (masked_text_frame(b"{}", opcode=0x3), 1002),
}


@pytest.mark.trio
@pytest.mark.parametrize("reason", sorted(BEFORE_INIT))
async def test_F01_a_frame_the_websocket_layer_refuses_before_init_is_closed_with_its_code_and_logged(
    stack: Stack, reason: str
) -> None:
    frame, code = BEFORE_INIT[reason]
    new = NewConnection(stack.session.proc)
    raw = await RawWs.connect(stack.session.ws_url)
    try:
        await raw._send(frame)
        closed = await raw.read_until_closed()
        assert (closed.code, closed.frames) == (code, []), closed
        await _see_eof(raw, reply=True)
    finally:
        raw.close()
    [line] = close_lines(stack.session.proc, new.id())
    assert (line["reason"], line["client_close_code"], line["level"]) == (reason, code, "warning"), line


@pytest.mark.trio
async def test_F01_invalid_utf8_after_init_is_closed_with_1007_and_logged_with_the_session(stack: Stack) -> None:
    raw, ready, user, project = await _ready_raw(stack)
    try:
        await raw._send(masked_text_frame(b'{"type":"ping","v":1,"x":"\xc3\x28"}'))
        closed = await raw.read_until_closed()
        assert closed.code == 1007, closed
        assert [f["type"] for f in closed.frames if f["type"] == "error"] == [], closed
        await _see_eof(raw, reply=False)
    finally:
        raw.close()
    [line] = close_lines(stack.session.proc, ready["connection_id"])
    assert (line["reason"], line["client_close_code"], line["level"]) == ("invalid_utf8", 1007, "warning"), line
    assert line["user_id"] == user.user_id, line
    assert line["project_id"] == project["id"], line


@pytest.mark.trio
@pytest.mark.parametrize(("close", "logged"), [(CloseConnection(code=1001), 1001), (CloseConnection(code=4321), 4321)])
async def test_F40_the_close_code_a_client_sends_is_the_one_logged(
    stack: Stack, close: CloseConnection, logged: int
) -> None:
    raw, ready, _user, _project = await _ready_raw(stack)
    try:
        await raw._send(raw.conn.send(close))
        closed = await raw.read_until_closed()  # the server's reply
        assert closed.code == close.code, closed
    finally:
        raw.close()
    [line] = close_lines(stack.session.proc, ready["connection_id"])
    assert (line["reason"], line["client_close_code"], line["level"]) == ("client_closed", logged, "info"), line


@pytest.mark.trio
async def test_F40_a_close_frame_without_a_code_and_a_dropped_link_are_told_apart(stack: Stack) -> None:
    """RFC 6455: no status code in the close frame is 1005; no close frame at all is 1006."""
    ids: list[str] = []
    for send_close in (True, False):
        new = NewConnection(stack.session.proc)
        raw = await RawWs.connect(stack.session.ws_url)
        try:
            ids.append(new.id())
            if send_close:
                await raw._send(struct.pack("!BBI", 0x88, 0x80, 0))  # masked close frame, empty payload
                closed = await raw.read_until_closed()
                assert closed.code == 1005, closed
        finally:
            raw.close()
    lines = [close_lines(stack.session.proc, connection_id)[0] for connection_id in ids]
    assert [(line["reason"], line["client_close_code"]) for line in lines] == [
        ("client_closed", 1005),
        ("client_closed", 1006),
    ], lines
