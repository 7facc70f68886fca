"""Session service configuration, read once from the environment into a frozen dataclass."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from tether_kit import config as env


@dataclass(frozen=True)
class Config:
    database_url: str
    host: str
    port: int
    auth_url: str
    auth_service_key: str
    ingest_keys: dict[str, str]
    allowed_origins: frozenset[str]
    require_origin: bool
    cors_origins: frozenset[str]
    max_body_bytes: int
    init_timeout_ms: int
    startup_wait_ms: int
    heartbeat_interval_ms: int
    heartbeat_timeout_ms: int
    max_frame_bytes: int
    prompts_per_minute: int
    max_connections_per_user: int
    session_lifetime_s: int
    send_timeout_ms: int
    replay_page: int
    ws_deflate: bool  # negotiate permessage-deflate when offered (off by default: memory and CPU per session)
    retention_events: int
    retention_interval_s: float
    max_connections: int
    shed_loop_lag_ms: float
    shed_handshakes: int
    shed_append_queue: int
    connect_capacity_per_s: float
    ingest_capacity_per_s: float
    connects_per_ip_per_minute: int
    drain_window_ms: int
    drain_timeout_s: float
    agent_chunks: int
    agent_delay_ms: int
    agent_url: str
    agent_key: str
    agent_stale_s: float
    public_url: str
    public_auth_url: str
    public_ws_urls: tuple[str, ...]
    test_mode: bool
    record_auth_calls: str
    contracts_dir: Path
    web_root: Path
    db_pool_max: int
    replica: str

    @classmethod
    def from_env(cls) -> Config:
        openapi = env.contract_path("TETHER_SESSION_CONTRACT", "session/openapi.json", Path(__file__))
        port = env.env_int("TETHER_SESSION_PORT", 8002)
        host = env.env_str("TETHER_SESSION_HOST", "127.0.0.1")
        public_url = env.env_str("TETHER_PUBLIC_URL", f"http://{host}:{port}")
        web_default = Path(__file__).resolve().parents[4] / "clients" / "js"
        return cls(
            database_url=env.env_str("DATABASE_URL"),
            host=host,
            port=port,
            auth_url=env.env_str("TETHER_AUTH_URL", "http://127.0.0.1:8001").rstrip("/"),
            auth_service_key=env.env_str("TETHER_AUTH_SERVICE_KEY"),
            ingest_keys=env.env_pairs("TETHER_INGEST_KEYS"),
            allowed_origins=frozenset(
                env.env_list("TETHER_ALLOWED_ORIGINS", "http://127.0.0.1:8002,http://localhost:8002")
            ),
            require_origin=env.env_bool("TETHER_REQUIRE_ORIGIN", False),
            cors_origins=frozenset(env.env_list("TETHER_CORS_ORIGINS")),
            max_body_bytes=env.env_int("TETHER_MAX_BODY_BYTES", 1 << 20),
            init_timeout_ms=env.env_int("TETHER_INIT_TIMEOUT_MS", 5000),
            startup_wait_ms=env.env_int("TETHER_STARTUP_WAIT_MS", 3000),
            heartbeat_interval_ms=env.env_int("TETHER_HEARTBEAT_INTERVAL_MS", 15000),
            heartbeat_timeout_ms=env.env_int("TETHER_HEARTBEAT_TIMEOUT_MS", 45000),
            max_frame_bytes=env.env_int("TETHER_MAX_FRAME_BYTES", 64 * 1024),
            prompts_per_minute=env.env_int("TETHER_PROMPTS_PER_MINUTE", 120),
            max_connections_per_user=env.env_int("TETHER_MAX_CONNECTIONS_PER_USER", 100),
            session_lifetime_s=env.env_int("TETHER_SESSION_LIFETIME_S", 3600),
            send_timeout_ms=env.env_int("TETHER_SEND_TIMEOUT_MS", 10000),
            replay_page=env.env_int("TETHER_REPLAY_PAGE", 1000),
            ws_deflate=env.env_bool("TETHER_WS_DEFLATE", False),
            retention_events=env.env_int("TETHER_RETENTION_EVENTS", 0),
            retention_interval_s=env.env_float("TETHER_RETENTION_INTERVAL_S", 30.0),
            max_connections=env.env_int("TETHER_MAX_CONNECTIONS", 20000),
            shed_loop_lag_ms=env.env_float("TETHER_SHED_LOOP_LAG_MS", 500.0),
            shed_handshakes=env.env_int("TETHER_SHED_HANDSHAKES", 500),
            shed_append_queue=env.env_int("TETHER_SHED_APPEND_QUEUE", 1000),
            connect_capacity_per_s=env.env_float("TETHER_CONNECT_CAPACITY_PER_S", 500.0),
            ingest_capacity_per_s=env.env_float("TETHER_INGEST_CAPACITY_PER_S", 700.0),
            connects_per_ip_per_minute=env.env_int("TETHER_CONNECTS_PER_IP_PER_MINUTE", 600),
            drain_window_ms=env.env_int("TETHER_DRAIN_WINDOW_MS", 2000),
            drain_timeout_s=env.env_float("TETHER_DRAIN_TIMEOUT_S", 10.0),
            agent_chunks=env.env_int("TETHER_AGENT_CHUNKS", 8),
            agent_delay_ms=env.env_int("TETHER_AGENT_DELAY_MS", 25),
            agent_url=env.env_str("TETHER_AGENT_URL", "builtin"),
            agent_key=env.env_str("TETHER_AGENT_KEY", "builtin"),
            agent_stale_s=env.env_float("TETHER_AGENT_STALE_S", 5.0),
            public_url=public_url.rstrip("/"),
            public_auth_url=env.env_str("TETHER_PUBLIC_AUTH_URL", "http://127.0.0.1:8001").rstrip("/"),
            public_ws_urls=env.env_list("TETHER_PUBLIC_WS_URLS", public_url.replace("http", "ws", 1) + "/v1/ws"),
            test_mode=env.env_bool("TETHER_TEST_MODE", False),
            record_auth_calls=env.env_str("TETHER_RECORD_AUTH_CALLS", "-"),
            contracts_dir=openapi.parent,
            web_root=Path(env.env_str("TETHER_WEB_ROOT", str(web_default))),
            db_pool_max=env.env_int("TETHER_DB_POOL_MAX", 20),
            replica=env.env_str("TETHER_REPLICA", f"{socket.gethostname()}-{os.getpid()}"),
        )
