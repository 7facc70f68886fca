"""Reading configuration from the environment, once, with loud errors."""

from __future__ import annotations

import os
from pathlib import Path


class ConfigError(RuntimeError):
    pass


def env_str(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if value is None or value == "":
        raise ConfigError(f"environment variable {name} is required")
    return value


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from exc


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from exc


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be a boolean, got {raw!r}")


def env_list(name: str, default: str = "") -> tuple[str, ...]:
    raw = os.environ.get(name, default)
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def env_pairs(name: str) -> dict[str, str]:
    """``a=x,b=y`` into a dict (used for per-service shared secrets)."""
    pairs: dict[str, str] = {}
    for item in env_list(name):
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ConfigError(f"{name} must be name=value pairs separated by commas")
        pairs[key.strip()] = value.strip()
    return pairs


def contract_path(env_name: str, relative: str, anchor: Path) -> Path:
    """The contract file: from ``env_name``, else found in ``contracts/`` above ``anchor``."""
    explicit = os.environ.get(env_name)
    if explicit:
        return Path(explicit)
    for parent in anchor.resolve().parents:
        candidate = parent / "contracts" / relative
        if candidate.is_file():
            return candidate
    raise ConfigError(f"cannot find contracts/{relative}; set {env_name}")
