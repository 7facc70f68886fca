"""Secrets a test run has seen (tokens, API keys, session cookies) and a log scanner (F07).

Helpers that create or receive a secret call :func:`remember`; the conforming HTTP
clients do it for every ``token`` field of a JSON body and every ``Set-Cookie`` value.
:func:`find_leaks` then proves that none of them was ever written to a log file.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import httpx

_SEEN: set[str] = set()
_LOCK = threading.Lock()
# Shorter values could match by accident; every Tether secret is far longer.
MIN_SECRET_LEN = 16
SECRET_BODY_KEYS = frozenset({"token", "api_key"})


def remember(*secrets: str) -> None:
    with _LOCK:
        _SEEN.update(s for s in secrets if s and len(s) >= MIN_SECRET_LEN)


def remembered() -> frozenset[str]:
    with _LOCK:
        return frozenset(_SEEN)


def remember_from_response(response: httpx.Response, body: Any) -> None:
    """Response hook: remember secret-looking body fields and every cookie set."""
    if isinstance(body, dict):
        remember(*(str(v) for k, v in body.items() if k in SECRET_BODY_KEYS and isinstance(v, str)))
    for header in response.headers.get_list("set-cookie"):
        cookie: SimpleCookie = SimpleCookie()
        cookie.load(header)
        remember(*(morsel.value for morsel in cookie.values()))


def find_leaks(files: Iterable[Path], secrets: Iterable[str]) -> list[str]:
    """``"<file>: <secret prefix>…"`` for every secret found in any of ``files``."""
    wanted = [s for s in set(secrets) if len(s) >= MIN_SECRET_LEN]
    leaks: list[str] = []
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        leaks.extend(f"{path}: {secret[:6]}…" for secret in wanted if secret in text)
    return leaks
