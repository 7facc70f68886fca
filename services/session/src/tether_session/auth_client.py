"""The session service as a consumer of the auth-token contract.

Only two calls, exactly as contracts/auth-token/openapi.json describes them:
``POST /v1/tokens/consume-batch`` (service credential) and ``GET /v1/me`` (the user's own
credential, forwarded).  In test mode every call can be recorded to a JSON-lines file
(token values replaced by same-length placeholders) for the consumer contract test.

Token consumes are coalesced: :meth:`AuthClient.consume` queues the token, and at most
``batches_in_flight`` consume-batch requests are out at a time.  A consume that finds a free
slot goes out at once (alone, when nothing else is waiting); the ones arriving while every
slot is busy wait and leave together in the next batch (at most 100 tokens, at most
``_BATCH_BYTES`` of body).  Under a connect storm one request then carries tens of tokens:
one HTTP round trip and one SQL statement instead of one each per connect.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from dataclasses import dataclass
from typing import Any, NamedTuple

import httpx

from tether_kit.batching import Batcher
from tether_kit.errors import DependencyUnavailable, TetherError
from tether_kit.logs import DEPENDENCIES

from .protocol import SessionError

# The per-token error codes of consume-batch (each a close code of the session contract).
_TOKEN_ERRORS = frozenset({"token_unknown", "token_used", "token_expired"})
_BATCH_PATH = "/v1/tokens/consume-batch"
_BATCH_MAX = 100  # the contract's maxItems
# Well under the auth-token service's body limit (16 KiB by default): 100 issued tokens take
# ~5 KiB, so only batches of odd client-sent strings are cut short by it.
_BATCH_BYTES = 8 * 1024


class Consumed(NamedTuple):
    """What a consumed connection token proves: whose it was, and the project it is bound to."""

    user_id: uuid.UUID
    project_id: uuid.UUID | None


class AuthUser(NamedTuple):
    id: uuid.UUID
    name: str


@dataclass(frozen=True)
class _Waiter:
    """One queued consume: its token (and that token as a JSON string) and its caller's future."""

    token_json: str
    request_id: str
    future: asyncio.Future[Consumed]


async def _answered(response: httpx.Response) -> None:
    """An answer below 500: the auth-token service is there (ends an outage HttpKit reported)."""
    if response.status_code < 500:
        DEPENDENCIES.ok("auth-token")


def _fits(batch: list[_Waiter], waiter: _Waiter) -> bool:
    """Another token still fits the consume-batch request (its count and its body size)."""
    size = sum(len(w.token_json) + 1 for w in batch) + len(waiter.token_json) + 1
    return len(batch) < _BATCH_MAX and size <= _BATCH_BYTES


class AuthClient:
    def __init__(
        self, base_url: str, service_key: str, *, record_path: str | None = None, batches_in_flight: int = 2
    ) -> None:
        self.base_url = base_url
        self.service_key = service_key
        self.record_path = record_path
        self.batches_in_flight = max(1, batches_in_flight)
        timeout = httpx.Timeout(3.0, connect=1.0)
        hooks: dict[str, list[Any]] = {"response": [_answered]}
        # /v1/me and /healthz: one request per REST call.
        self.http = httpx.AsyncClient(
            base_url=base_url,
            timeout=timeout,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
            event_hooks=hooks,
        )
        # consume-batch: never more requests than batches in flight, so a pool of that size
        # never makes one wait, and its bookkeeping stays small.
        self.consume_http = httpx.AsyncClient(
            base_url=base_url,
            timeout=timeout,
            limits=httpx.Limits(
                max_connections=self.batches_in_flight, max_keepalive_connections=self.batches_in_flight
            ),
            event_hooks=hooks,
        )
        self._batcher: Batcher[_Waiter] = Batcher(
            self._send_batch, name="auth-consume-batch", in_flight=self.batches_in_flight, fits=_fits
        )
        self._closed = False

    async def aclose(self) -> None:
        self._closed = True
        queue = self._batcher.queue
        while queue:
            waiter = queue.popleft()
            if not waiter.future.done():
                waiter.future.set_exception(_unavailable("the session service is stopping", cause="shutdown"))
        await self._batcher.stop()
        await self.consume_http.aclose()
        await self.http.aclose()

    def _record(self, method: str, path: str, body: Any, response: httpx.Response) -> None:
        if not self.record_path:
            return
        if isinstance(body, dict) and "tokens" in body:
            body = {**body, "tokens": ["x" * len(token) for token in body["tokens"]]}
        try:
            response_body: Any = response.json()
        except ValueError:
            response_body = response.text[:500]
        line = {
            "method": method,
            "path": path,
            "request_body": body,
            "request_content_type": "application/json" if body is not None else None,
            "status": response.status_code,
            "response_content_type": response.headers.get("content-type", ""),
            "response_headers": {"x-request-id": response.headers.get("x-request-id")},
            "response_body": response_body,
        }
        with open(self.record_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")

    async def consume(self, token: str, *, request_id: str) -> Consumed:
        """Consume a connection token; auth failures become catalogue SessionErrors."""
        if self._closed:
            raise _unavailable("the session service is stopping", cause="shutdown")
        future: asyncio.Future[Consumed] = asyncio.get_running_loop().create_future()
        self._batcher.submit(_Waiter(json.dumps(token), request_id, future))
        # A caller cancelled here cancels its future: a batch not yet sent leaves its token out.
        return await future

    async def _send_batch(self, batch: list[_Waiter]) -> None:
        """One consume-batch request for ``batch``; every waiter gets its own answer, whatever happens."""
        try:
            outcomes = await self._consume_batch(batch)
        except asyncio.CancelledError:
            for waiter in batch:
                if not waiter.future.done():
                    waiter.future.set_exception(_unavailable("the session service is stopping", cause="shutdown"))
            raise
        except Exception as exc:  # noqa: BLE001 - handed to every waiter, whose close logs it
            outcomes = [
                SessionError(
                    "internal_error",
                    "consuming the connection token failed",
                    log_fields={"dependency": "auth-token", "cause": type(exc).__name__},
                )
                for _ in batch
            ]
        for waiter, outcome in zip(batch, outcomes, strict=True):
            if waiter.future.done():  # cancelled while the batch was out; the token is spent either way
                continue
            if isinstance(outcome, SessionError):
                waiter.future.set_exception(outcome)
            else:
                waiter.future.set_result(outcome)

    async def _consume_batch(self, batch: list[_Waiter]) -> list[Consumed | SessionError]:
        request_id = batch[0].request_id if len(batch) == 1 else f"{batch[0].request_id}.batch{len(batch)}"
        content = ('{"tokens":[' + ",".join(w.token_json for w in batch) + "]}").encode()
        try:
            response = await self.consume_http.post(
                _BATCH_PATH,
                content=content,
                headers={
                    "Authorization": f"Bearer {self.service_key}",
                    "X-Request-ID": request_id,
                    "Content-Type": "application/json",
                },
            )
        except httpx.HTTPError as exc:
            cause = type(exc).__name__
            return [_unavailable("the auth-token service could not be reached", cause=cause) for _ in batch]
        if self.record_path:
            self._record("POST", _BATCH_PATH, {"tokens": [json.loads(w.token_json) for w in batch]}, response)
        auth_request_id = response.headers.get("x-request-id")
        if response.status_code == 200:
            results = _batch_results(response, len(batch))
            if results is not None:
                return [_outcome(result, auth_request_id) for result in results]
            return [_off_contract(auth_status=200, auth_request_id=auth_request_id) for _ in batch]
        code = _problem_code(response)
        if response.status_code >= 500:
            return [
                SessionError(
                    "auth_unavailable",
                    f"the auth-token service answered {response.status_code}",
                    retry_after_ms=random.randint(500, 2000),
                    log_fields={"dependency": "auth-token", "auth_code": code, "auth_request_id": auth_request_id},
                )
                for _ in batch
            ]
        # 401 service_unauthenticated or anything undocumented: our configuration is wrong.
        return [
            SessionError(
                "internal_error",
                "the session service could not use the auth-token service",
                log_fields={"auth_status": response.status_code, "auth_code": code, "auth_request_id": auth_request_id},
            )
            for _ in batch
        ]

    async def me(self, *, authorization: str | None, session_cookie: str | None, request_id: str) -> AuthUser:
        """Validate a user's credential by asking the auth-token service who it is."""
        headers = {"X-Request-ID": request_id}
        if authorization is not None:
            headers["Authorization"] = authorization
        cookies = {"tether_session": session_cookie} if session_cookie and authorization is None else None
        if authorization is None and not cookies:
            raise TetherError("unauthenticated", "a valid API key (Bearer) or session cookie is required")
        if not (authorization or "").isascii() or not (session_cookie or "").isascii():
            # Tether credentials are ASCII; httpx cannot forward anything else (it answered 500).
            raise TetherError("unauthenticated", "a valid API key (Bearer) or session cookie is required")
        try:
            response = await self.http.get("/v1/me", headers=headers, cookies=cookies)
        except httpx.HTTPError as exc:
            raise DependencyUnavailable("auth-token", "the auth-token service could not be reached") from exc
        self._record("GET", "/v1/me", None, response)
        if response.status_code == 200:
            data = response.json()
            return AuthUser(uuid.UUID(data["id"]), data["name"])
        if response.status_code == 401:
            raise TetherError("unauthenticated", "a valid API key (Bearer) or session cookie is required")
        raise DependencyUnavailable("auth-token", f"the auth-token service answered {response.status_code}")

    async def healthy(self) -> bool:
        try:
            response = await self.http.get("/healthz", timeout=1.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200


def _unavailable(detail: str, *, cause: str) -> SessionError:
    return SessionError(
        "auth_unavailable",
        detail,
        retry_after_ms=random.randint(500, 2000),
        log_fields={"dependency": "auth-token", "cause": cause},
    )


def _batch_results(response: httpx.Response, count: int) -> list[dict[str, Any]] | None:
    """The ``results`` of a consume-batch 200, one per token in order; None when it is not that."""
    try:
        data = response.json()
    except ValueError:
        return None
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, list) or len(results) != count:
        return None
    for index, result in enumerate(results):
        if not isinstance(result, dict) or result.get("token_index") != index:
            return None
    return results


def _outcome(result: dict[str, Any], auth_request_id: str | None) -> Consumed | SessionError:
    if result.get("status") == "consumed":
        try:
            project_id = result["project_id"]
            return Consumed(uuid.UUID(result["user_id"]), uuid.UUID(project_id) if project_id else None)
        except (KeyError, TypeError, ValueError) as exc:
            return _off_contract(auth_request_id=auth_request_id, cause=type(exc).__name__)
    code = result.get("code")
    if result.get("status") == "error" and code in _TOKEN_ERRORS:
        return SessionError(str(code), log_fields={"auth_request_id": auth_request_id})
    return _off_contract(auth_request_id=auth_request_id, auth_code=str(code))


def _off_contract(**log_fields: Any) -> SessionError:
    return SessionError(
        "internal_error", "the auth-token service answered consume-batch outside its contract", log_fields=log_fields
    )


def _problem_code(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return "unparseable"
    code = data.get("code") if isinstance(data, dict) else None
    return code if isinstance(code, str) else "missing"
