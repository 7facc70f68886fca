"""The session service's HTTP error catalogue (the WebSocket close codes are in contracts/session)."""

from __future__ import annotations

from tether_kit.errors import COMMON, Catalogue, ErrorSpec

CATALOGUE = Catalogue(
    [
        *COMMON,
        ErrorSpec("idempotency_conflict", 409, "Idempotency-Key reused with a different request"),
        ErrorSpec("service_unauthenticated", 401, "Missing or invalid service credential"),
        ErrorSpec("resume_unavailable", 410, "Events before this point are no longer retained"),
        ErrorSpec("draining", 503, "Replica is draining", retry_after_s=1),
        ErrorSpec("overloaded", 503, "Replica is overloaded: retry after Retry-After", retry_after_s=1),
    ]
)
