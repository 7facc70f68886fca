"""Reusable black-box test support: Postgres, service subprocesses, contracts, waiting.

Import from the submodules (``tests.support.procs`` …) or from here.
"""

from __future__ import annotations

from .auth import (
    AUTH_CONTRACT,
    AuthService,
    AuthServiceFactory,
    UserCredentials,
    auth_env,
    make_user,
    unique_name,
)
from .contract import Contract, ContractViolation, assert_conforms, async_client, load_contract, sync_client
from .fuzzing import unique_request_ids
from .logs import assert_one_error_line, lines_for_request
from .metrics import Metrics, parse_metrics, scrape
from .pg import PgServer, aquery, query, start_pg_server
from .procs import ServiceFailed, ServiceProcess, live_processes, stop_all, wait_all_ready
from .secrets import find_leaks, remember, remembered
from .waiting import WaitTimeout, await_until, scaled, timeout_scale, wait_until

__all__ = [
    "AUTH_CONTRACT",
    "AuthService",
    "AuthServiceFactory",
    "Contract",
    "ContractViolation",
    "Metrics",
    "PgServer",
    "ServiceFailed",
    "ServiceProcess",
    "UserCredentials",
    "WaitTimeout",
    "aquery",
    "assert_conforms",
    "assert_one_error_line",
    "async_client",
    "auth_env",
    "await_until",
    "find_leaks",
    "lines_for_request",
    "live_processes",
    "load_contract",
    "make_user",
    "parse_metrics",
    "query",
    "remember",
    "remembered",
    "scaled",
    "scrape",
    "start_pg_server",
    "stop_all",
    "sync_client",
    "timeout_scale",
    "unique_name",
    "unique_request_ids",
    "wait_all_ready",
    "wait_until",
]
