"""The CLI's stored API key: ``$TETHER_CONFIG_DIR/credentials`` (default
``~/.config/tether/credentials``), JSON, mode 0600 in a 0700 directory."""

from __future__ import annotations

import json
import os
from pathlib import Path

CONFIG_DIR_ENV = "TETHER_CONFIG_DIR"


def config_dir() -> Path:
    explicit = os.environ.get(CONFIG_DIR_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "tether"


def credentials_path() -> Path:
    return config_dir() / "credentials"


def load_api_key() -> str | None:
    """The stored API key, or ``None`` when nothing is stored.

    Raises ``ValueError`` when the file exists but is unreadable as credentials, so a
    corrupt file is reported instead of silently ignored.
    """
    path = credentials_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); run `tether login` again") from None
    key = data.get("api_key") if isinstance(data, dict) else None
    if not isinstance(key, str) or not key:
        raise ValueError(f"{path} holds no api_key; run `tether login` again")
    return key


def save_api_key(api_key: str) -> Path:
    """Write the key with mode 0600 (the directory 0700), replacing the file atomically."""
    path = credentials_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            os.fchmod(out.fileno(), 0o600)  # O_CREAT's mode is masked by umask; be explicit
            json.dump({"api_key": api_key}, out)
            out.write("\n")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return path
