"""Auth-token service configuration, read once from the environment."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tether_kit import config as env

from .issuer import Limits


@dataclass(frozen=True)
class Config:
    database_url: str
    host: str
    port: int
    token_ttl_s: int
    web_session_ttl_s: int
    service_keys: dict[str, str]
    cors_origins: frozenset[str]
    cookie_secure: bool
    max_body_bytes: int
    token_issue_per_minute: int
    token_issue: Limits
    test_mode: bool
    contract: Path
    db_pool_max: int

    @classmethod
    def from_env(cls) -> Config:
        return cls(
            database_url=env.env_str("DATABASE_URL"),
            host=env.env_str("TETHER_AUTH_HOST", "127.0.0.1"),
            port=env.env_int("TETHER_AUTH_PORT", 8001),
            token_ttl_s=env.env_int("TETHER_TOKEN_TTL_S", 60),
            web_session_ttl_s=env.env_int("TETHER_WEB_SESSION_TTL_S", 12 * 3600),
            service_keys=env.env_pairs("TETHER_SERVICE_KEYS"),
            cors_origins=frozenset(env.env_list("TETHER_CORS_ORIGINS")),
            cookie_secure=env.env_bool("TETHER_COOKIE_SECURE", False),
            max_body_bytes=env.env_int("TETHER_MAX_BODY_BYTES", 16 * 1024),
            token_issue_per_minute=env.env_int("TETHER_TOKEN_ISSUE_PER_MINUTE", 120),
            token_issue=Limits(
                batches_in_flight=max(1, env.env_int("TETHER_TOKEN_ISSUE_BATCHES", 2)),
                batch_max=max(1, env.env_int("TETHER_TOKEN_ISSUE_BATCH_MAX", 200)),
                max_pending=max(1, env.env_int("TETHER_TOKEN_ISSUE_MAX_PENDING", 128)),
                max_wait_s=env.env_int("TETHER_TOKEN_ISSUE_MAX_WAIT_MS", 500) / 1000,
                statement_timeout_s=env.env_int("TETHER_TOKEN_ISSUE_STATEMENT_TIMEOUT_MS", 2000) / 1000,
                retry_after_max_s=max(1, env.env_int("TETHER_TOKEN_ISSUE_RETRY_AFTER_MAX_S", 3)),
            ),
            test_mode=env.env_bool("TETHER_TEST_MODE", False),
            contract=env.contract_path("TETHER_AUTH_CONTRACT", "auth-token/openapi.json", Path(__file__)),
            db_pool_max=env.env_int("TETHER_DB_POOL_MAX", 10),
        )
