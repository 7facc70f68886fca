"""The auth-token service's error catalogue: every error it can answer with."""

from __future__ import annotations

from tether_kit.errors import COMMON, Catalogue, ErrorSpec

CATALOGUE = Catalogue(
    [
        *COMMON,
        ErrorSpec("token_unknown", 404, "Connection token unknown"),
        ErrorSpec("token_used", 409, "Connection token already used"),
        ErrorSpec("token_expired", 410, "Connection token expired"),
        ErrorSpec("service_unauthenticated", 401, "Missing or invalid service credential"),
        ErrorSpec("overloaded", 503, "Over capacity; retry after Retry-After", retry_after_s=1),
    ]
)
