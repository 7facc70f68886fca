"""F32: a server (or a proxy in front of it) may refuse a frame below the session layer,
with a bare RFC 6455 close and no ``error`` frame: 1009 (message too big, before the
payload is read) or 1007 (invalid UTF-8).  The SDK maps them to the catalogue's
``frame_too_large`` and ``invalid_frame``: terminal, action ``fix_client``, never retried.
"""

from __future__ import annotations

import pytest
import trio
from test_client_session import FAST, PROJECT, Tokens
from tether_fake_server import Conn, FakeServer, entry

from tether_client import TetherClosed, open_session
from tether_client.closing import CloseCatalogue, decide_close
from tether_client.frames import ErrorFrame


@pytest.mark.trio
async def test_F32_a_prompt_above_the_servers_message_cap_ends_with_frame_too_large(nursery: trio.Nursery) -> None:
    async def listens(conn: Conn) -> None:
        await conn.ready()
        await conn.until_closed()

    server = await FakeServer([listens], max_message_size=1024).start(nursery)
    tokens = Tokens()
    async with open_session(server.url, PROJECT, tokens, **FAST) as session:
        with pytest.raises(TetherClosed) as info, trio.fail_after(5):
            await session.send("x" * 2000)  # within the contract's limit, above this server's cap
    closed = info.value
    expected = entry("frame_too_large")
    assert (closed.code, closed.name, closed.action) == (1009, "frame_too_large", "fix_client")
    assert closed.message == expected["message"]
    assert expected["retryable"] is False
    assert len(server.conns) == 1  # terminal: no reconnect, no second token
    assert len(tokens.issued) == 1


@pytest.mark.trio
async def test_F32_a_bare_1007_close_is_invalid_frame(nursery: trio.Nursery) -> None:
    async def refuses(conn: Conn) -> None:
        await conn.ready()
        await conn.ws.aclose(1007, "invalid UTF-8")

    server = await FakeServer([refuses]).start(nursery)

    async def read_all() -> None:
        async with open_session(server.url, PROJECT, Tokens(), **FAST) as session:
            async for _ in session.events():
                pytest.fail("no event was sent")

    with pytest.raises(TetherClosed) as info, trio.fail_after(5):
        await read_all()
    closed = info.value
    assert (closed.code, closed.name, closed.action) == (1007, "invalid_frame", "fix_client")
    assert closed.message == entry("invalid_frame")["message"]
    assert len(server.conns) == 1


def test_F32_transport_codes_follow_the_catalogue_entry_and_an_error_frame_still_wins() -> None:
    catalogue = CloseCatalogue.bundled()
    flipped = CloseCatalogue.from_json(
        {
            "version": catalogue.version,
            "codes": [
                {
                    "code": e.code,
                    "name": e.name,
                    "meaning": e.meaning,
                    "retryable": not e.retryable,
                    "action": e.action,
                    "message": e.message,
                    "cause": "client",
                    "log_level": "warning",
                }
                for e in catalogue.entries
            ],
        }
    )
    for code, name in ((1009, "frame_too_large"), (1007, "invalid_frame")):
        assert decide_close(catalogue, code, None).retry is False
        assert decide_close(flipped, code, None).retry is True  # read from the catalogue, not hard-coded
        assert decide_close(catalogue, code, None).name == name
        draining = catalogue.by_name("draining")
        assert draining is not None
        explained = ErrorFrame("draining", draining.code, "bye", True, "resume")
        assert decide_close(catalogue, code, explained).name == "draining"
