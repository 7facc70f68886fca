"""Hashing and timing-safe comparison of secrets."""

from __future__ import annotations

import hashlib
import hmac


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


def same_secret(given: str, expected: str) -> bool:
    """Timing-safe comparison of two secrets (compares fixed-length digests)."""
    return hmac.compare_digest(digest(given), digest(expected))
