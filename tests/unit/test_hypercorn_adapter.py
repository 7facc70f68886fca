"""``tether_kit.hypercorn_adapter`` is pinned to the Hypercorn and wsproto it was written for.

The adapter subclasses Hypercorn internals (``WSStream._handle_events``, ``H11Protocol._create_stream``,
``TCPServer.run``...) and relies on how wsproto reports a parse failure.  An upgrade of either must
come with a re-read of the adapter against the new sources: these tests fail until then.  The
behaviour itself is held black-box by ``tests/session/test_ws_transport.py``, ``test_deflate.py``
and the F01/F40 tests of ``test_handshake.py``.
"""

from __future__ import annotations

import importlib.metadata

import pytest
from hypercorn.protocol import h11 as hypercorn_h11
from hypercorn.protocol import ws_stream

from tether_kit import hypercorn_adapter

WRITTEN_FOR = {"hypercorn": "0.18.0", "wsproto": "1.3.2"}


@pytest.mark.parametrize("package", sorted(WRITTEN_FOR))
def test_the_installed_version_is_the_one_the_adapter_was_written_for(package: str) -> None:
    installed = importlib.metadata.version(package)
    assert installed == WRITTEN_FOR[package], (
        f"{package} {installed} is installed; tether_kit/hypercorn_adapter.py was written for "
        f"{WRITTEN_FOR[package]}. Re-read the adapter against {package} {installed} (each numbered change of "
        "its docstring, and the Hypercorn code it copies), run the tests it names, then update WRITTEN_FOR."
    )


def test_the_hooks_the_adapter_overrides_still_exist() -> None:
    for cls, names in (
        (ws_stream.WSStream, ("handle", "app_send", "_accept", "_handle_events", "_send_wsproto_event")),
        (hypercorn_h11.H11Protocol, ("_check_protocol", "_create_stream", "_send_error_response")),
    ):
        for name in names:
            assert callable(getattr(cls, name, None)), f"{cls.__qualname__}.{name} is gone: re-read the adapter"


def test_nothing_in_hypercorn_is_replaced_process_wide() -> None:
    """The adapter's classes are used only by its own serve(): Hypercorn's modules keep their own."""
    assert hypercorn_h11.WSStream is ws_stream.WSStream
    assert ws_stream.Handshake.accept.__module__ == "hypercorn.protocol.ws_stream"
    assert issubclass(hypercorn_adapter.TetherWSStream, ws_stream.WSStream)
