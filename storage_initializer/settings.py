"""Run-wide settings, read once from flags and the environment.

Every tunable has a flag and a ``STORAGE_INITIALIZER_*`` variable; KServe's
own variables (``STORAGE_ALLOW_PATTERNS`` / ``STORAGE_IGNORE_PATTERNS``) keep
their meaning. Values are validated here so a typo fails before any download
starts, with the variable's name in the message.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from storage_initializer.errors import ConfigError

ENV_PREFIX = "STORAGE_INITIALIZER_"
MiB = 1024 * 1024
GiB = 1024 * MiB

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": MiB, "g": GiB, "t": 1024 * GiB}


def parse_size(text: str, name: str) -> int:
    """Parse ``64M``, ``1GiB``, ``8388608`` (binary units) into bytes."""
    match = _SIZE_RE.match(text)
    if not match:
        raise ConfigError(f"{name}={text!r} is not a size", hint="use bytes or a unit, e.g. 64M or 1GiB")
    number, unit, _ = match.groups()
    return int(float(number) * _UNITS[unit.lower()])


def parse_patterns(text: str | None) -> tuple[str, ...]:
    """Parse KServe's pattern variables: a JSON list (or string), else a comma list."""
    if text is None or not text.strip():
        return ()
    text = text.strip()
    try:
        parsed: Any = json.loads(text)
    except ValueError:
        return tuple(p.strip() for p in text.split(",") if p.strip())
    items = parsed if isinstance(parsed, list) else [parsed]
    return tuple(str(p).strip() for p in items if str(p).strip())


def _bool(text: str, name: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name}={text!r} is not a boolean", hint="use true or false")


@dataclass(frozen=True)
class Settings:
    """Everything the engine needs to know besides the URIs.

    ``part_size`` / ``multipart_threshold`` of ``None`` mean "adapt to the
    object": see :func:`storage_initializer.engine.parts.plan_parts`.
    """

    concurrency: int = 16
    file_concurrency: int = 4
    part_size: int | None = None
    multipart_threshold: int | None = None
    buffer_size: int = 1 * MiB
    retries: int = 5
    retry_backoff: float = 0.5
    stall_timeout: float = 60.0
    connect_timeout: float = 15.0
    allow_patterns: tuple[str, ...] = ()
    ignore_patterns: tuple[str, ...] = ()
    verify_checksums: bool = True
    fsync: bool = False
    heartbeat_seconds: float = 5.0
    extract_archives: bool = True
    max_extract_ratio: float = 1000.0
    provider: str | None = None
    log_level: str = "INFO"
    progress_bar: bool | None = None
    termination_log: str = "/dev/termination-log"
    env: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    def with_overrides(self, **overrides: Any) -> Settings:
        """Apply command-line values that were actually given (not ``None``)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


def settings_from_env(env: Mapping[str, str] | None = None) -> Settings:
    """Build :class:`Settings` from the environment (``os.environ`` by default)."""
    env = dict(os.environ if env is None else env)

    def get(name: str) -> str | None:
        value = env.get(ENV_PREFIX + name)
        return value if value not in (None, "") else None

    def number(name: str, default: float, minimum: float, cast: type = float) -> Any:
        raw = get(name)
        if raw is None:
            return default
        try:
            value = cast(raw)
        except ValueError:
            raise ConfigError(f"{ENV_PREFIX}{name}={raw!r} is not a number") from None
        if not math.isfinite(value):  # nan and inf pass every comparison below
            raise ConfigError(f"{ENV_PREFIX}{name}={raw!r} is not a finite number")
        if value < minimum:
            raise ConfigError(f"{ENV_PREFIX}{name}={raw!r} must be at least {minimum}")
        return value

    def size(name: str) -> int | None:
        raw = get(name)
        return None if raw is None else parse_size(raw, ENV_PREFIX + name)

    defaults = Settings()
    level = (get("LOG_LEVEL") or defaults.log_level).strip().upper()
    level = {"WARN": "WARNING", "CRITICAL": "ERROR", "FATAL": "ERROR"}.get(level, level)  # logging's aliases
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(
            f"{ENV_PREFIX}LOG_LEVEL={level!r} is not a log level", hint="use DEBUG, INFO, WARNING or ERROR"
        )
    bar = get("PROGRESS")
    buffer_size = size("BUFFER_SIZE") or defaults.buffer_size
    return Settings(
        concurrency=number("CONCURRENCY", defaults.concurrency, 1, int),
        file_concurrency=number("FILE_CONCURRENCY", defaults.file_concurrency, 1, int),
        part_size=size("PART_SIZE"),
        multipart_threshold=size("MULTIPART_THRESHOLD"),
        buffer_size=buffer_size,
        retries=number("RETRIES", defaults.retries, 0, int),
        retry_backoff=number("RETRY_BACKOFF", defaults.retry_backoff, 0),
        stall_timeout=number("STALL_TIMEOUT", defaults.stall_timeout, 0.1),
        connect_timeout=number("CONNECT_TIMEOUT", defaults.connect_timeout, 0.1),
        allow_patterns=parse_patterns(env.get("STORAGE_ALLOW_PATTERNS")),
        ignore_patterns=parse_patterns(env.get("STORAGE_IGNORE_PATTERNS")),
        verify_checksums=_bool(get("VERIFY_CHECKSUMS") or "true", ENV_PREFIX + "VERIFY_CHECKSUMS"),
        fsync=_bool(get("FSYNC") or "false", ENV_PREFIX + "FSYNC"),
        heartbeat_seconds=number("HEARTBEAT", defaults.heartbeat_seconds, 0.1),
        extract_archives=_bool(get("EXTRACT_ARCHIVES") or "true", ENV_PREFIX + "EXTRACT_ARCHIVES"),
        max_extract_ratio=number("MAX_EXTRACT_RATIO", defaults.max_extract_ratio, 1),
        provider=get("PROVIDER"),
        log_level=level,
        progress_bar=None if bar is None or bar.strip().lower() == "auto" else _bool(bar, ENV_PREFIX + "PROGRESS"),
        termination_log=get("TERMINATION_LOG") or defaults.termination_log,
        env=env,
    )
