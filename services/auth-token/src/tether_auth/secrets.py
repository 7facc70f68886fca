"""Random secrets and their hashes.  Secrets are shown once and stored only hashed."""

from __future__ import annotations

import hashlib
import hmac
import secrets

API_KEY_PREFIX = "tk_"
TOKEN_PREFIX = "tt_"
SESSION_PREFIX = "ts_"


def new_secret(prefix: str) -> str:
    """A 256-bit random secret, URL-safe, with a prefix naming its kind."""
    return prefix + secrets.token_urlsafe(32)


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


def same_secret(given: str, expected: str) -> bool:
    """Timing-safe comparison of two secrets (compares fixed-length digests)."""
    return hmac.compare_digest(digest(given), digest(expected))
