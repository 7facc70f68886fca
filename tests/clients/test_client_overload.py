"""Issue 19 against the real services: the SDK treats an auth-token refusal that says when
to come back (429 ``rate_limited`` + ``Retry-After``) as pacing, never as a terminal error
and never as a tight loop (F05, F32).

The auth-token service's per-user issue cap is the refusal that exists today; the
overload refusals (503 ``overloaded``, 4503) take the same path in the client and are
proved against the scripted fake servers (``clients/python/tests/test_client_overload.py``,
``clients/js/test/overload.test.mjs``).
"""

from __future__ import annotations

import itertools

import pytest
import trio

from tests.support.session import StackFactory
from tests.support.waiting import await_until, scaled
from tether_client import AuthClient, SessionHttp, TetherHTTPError, open_session

pytestmark = pytest.mark.trio


async def test_F05_sdk_paces_a_real_429_retry_after_from_auth_token_and_does_not_give_up(
    stack_factory: StackFactory,
) -> None:
    stack = stack_factory.start(auth_env={"TETHER_TOKEN_ISSUE_PER_MINUTE": "1"})
    user = stack.make_user()
    refusals: list[tuple[float, int, str, float | None]] = []
    async with SessionHttp(stack.session.url, user.api_key) as http, AuthClient(stack.auth.url, user.api_key) as auth:
        project = await http.create_project("paced")
        await auth.issue_token(project.id)  # the minute's budget is used up

        async def recording_token() -> str:
            try:
                return (await auth.issue_token(project.id)).token
            except TetherHTTPError as exc:
                refusals.append((trio.current_time(), exc.status, exc.code, exc.retry_after_s))
                raise

        async def connect() -> None:
            # max_reconnects=0: a refusal counted as a failure would raise TetherGaveUp at once.
            async with open_session(stack.session.ws_url, project.id, recording_token, max_reconnects=0):
                pytest.fail("no token can be issued within the minute: the session must not open")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(connect)

            async def three_refusals() -> bool:
                return len(refusals) >= 3

            await await_until(three_refusals, timeout=30, what="three paced token requests")
            nursery.cancel_scope.cancel()

    assert [(status, code, after) for _, status, code, after in refusals[:3]] == [(429, "rate_limited", 5.0)] * 3
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(refusals[:3])]
    # Retry-After 5 s plus the client's jitter (below min(5 s, the backoff ceiling)):
    # never sooner, and no storm.
    assert all(5.0 <= gap < scaled(10.5) for gap in gaps), gaps
