"""Random secrets.  Secrets are shown once and stored only hashed."""

from __future__ import annotations

import secrets

from tether_kit.secrets import digest, same_secret

API_KEY_PREFIX = "tk_"
TOKEN_PREFIX = "tt_"
SESSION_PREFIX = "ts_"

__all__ = ["API_KEY_PREFIX", "SESSION_PREFIX", "TOKEN_PREFIX", "digest", "new_secret", "same_secret"]


def new_secret(prefix: str) -> str:
    """A 256-bit random secret, URL-safe, with a prefix naming its kind."""
    return prefix + secrets.token_urlsafe(32)
