"""Validated configuration values, with one vocabulary for the core and every provider.

Every reader takes the mapping to read (a provider's ``self.env``, never
``os.environ`` behind its back) and the variable's name, and raises
:class:`~storage_initializer.errors.ConfigError` naming the variable, the
value and what would be accepted. An empty or blank value counts as unset
(as ``if os.getenv(...)`` in KServe), so the default applies.

* Booleans: ``1 true yes on`` / ``0 false no off``, case-insensitive,
  surrounding spaces ignored; any other word is an error (a typo in
  ``S3_VERIFY_SSL`` must not silently mean "on" or "off").
* Numbers refuse ``nan`` and ``inf`` (they pass every comparison), and values
  below the given minimum; seconds are positive numbers.
* Sizes: bytes or a number with a binary unit: ``8388608``, ``64M``,
  ``64MiB``, ``1GB``, ``1.5g`` (``k m g t``, all powers of 1024).
* Lists: a JSON list (or a JSON string), else a comma-separated list, as
  KServe's ``STORAGE_ALLOW_PATTERNS``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from storage_initializer.errors import ConfigError

__all__ = [
    "FALSE_WORDS",
    "TRUE_WORDS",
    "env_bool",
    "env_int",
    "env_list",
    "env_number",
    "env_seconds",
    "env_size",
    "env_str",
    "parse_bool",
    "parse_list",
    "parse_number",
    "parse_size",
]

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
_BOOL_HINT = "use one of " + ", ".join(TRUE_WORDS) + " / " + ", ".join(FALSE_WORDS)

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def env_str(env: Mapping[str, str], name: str) -> str | None:
    """The variable's value without surrounding spaces, or ``None`` when unset or blank."""
    value = env.get(name)
    if value is None or not value.strip():
        return None
    return value.strip()


# -- booleans ------------------------------------------------------------------------------
def parse_bool(text: str, name: str, *, true_false_only: bool = False) -> bool:
    """``text`` as a boolean; ``name`` says where it came from in the error.

    ``true_false_only`` accepts only ``true`` / ``false`` (any case): for
    settings that KServe compares with ``"true"``, where reading ``yes`` as
    true here but false there would turn a security setting around.
    """
    value = text.strip().lower()
    if true_false_only:
        if value in ("true", "false"):
            return value == "true"
        raise ConfigError(f"{name}={text!r} is not a boolean", hint="use true or false")
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    raise ConfigError(f"{name}={text!r} is not a boolean", hint=_BOOL_HINT)


def env_bool(env: Mapping[str, str], name: str, default: bool, *, true_false_only: bool = False) -> bool:
    """A boolean variable; ``default`` when unset or blank."""
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    return parse_bool(raw, name, true_false_only=true_false_only)


# -- numbers ---------------------------------------------------------------------------------
def parse_number(
    text: str,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    integer: bool = False,
    positive: bool = False,
) -> float:
    """``text`` as a finite number within bounds (``positive``: strictly above 0).

    With ``integer`` the value must be a whole number (``3``, not ``3.5``);
    the result is still a float: callers that need an ``int`` use :func:`env_int`.
    """
    raw = text.strip()
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={text!r} is not a number") from None
    if not math.isfinite(value):  # nan and inf pass every comparison below
        raise ConfigError(f"{name}={text!r} is not a finite number")
    if integer and not value.is_integer():
        raise ConfigError(f"{name}={text!r} is not a whole number")
    if positive and value <= 0:
        raise ConfigError(f"{name}={text!r} must be positive")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name}={text!r} must be at least {minimum:g}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name}={text!r} must be at most {maximum:g}")
    return value


def env_number(
    env: Mapping[str, str],
    name: str,
    default: float,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
) -> float:
    """A finite number; ``default`` when unset or blank."""
    raw = env_str(env, name)
    return default if raw is None else parse_number(raw, name, minimum=minimum, maximum=maximum)


def env_int(
    env: Mapping[str, str],
    name: str,
    default: int,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int:
    """A whole number; ``default`` when unset or blank."""
    raw = env_str(env, name)
    if raw is None:
        return default
    return int(parse_number(raw, name, minimum=minimum, maximum=maximum, integer=True))


def env_seconds(env: Mapping[str, str], name: str, default: float) -> float:
    """A positive number of seconds; ``default`` when unset or blank."""
    raw = env_str(env, name)
    return default if raw is None else parse_number(raw, name, positive=True)


# -- sizes -----------------------------------------------------------------------------------
def parse_size(text: str, name: str) -> int:
    """Parse ``64M``, ``64MiB``, ``1GB``, ``8388608`` (binary units) into bytes."""
    match = _SIZE_RE.match(text)
    if not match:
        raise ConfigError(f"{name}={text!r} is not a size", hint="use bytes or a unit, e.g. 64M or 1GiB")
    number, unit, _ = match.groups()
    return int(float(number) * _UNITS[unit.lower()])


def env_size(env: Mapping[str, str], name: str, default: int | None = None) -> int | None:
    """A size in bytes; ``default`` when unset or blank."""
    raw = env_str(env, name)
    return default if raw is None else parse_size(raw, name)


# -- lists -----------------------------------------------------------------------------------
def parse_list(text: str | None) -> tuple[str, ...]:
    """A JSON list (or JSON string), else a comma list; blank items dropped."""
    if text is None or not text.strip():
        return ()
    text = text.strip()
    try:
        parsed: Any = json.loads(text)
    except ValueError:
        return tuple(p.strip() for p in text.split(",") if p.strip())
    items = parsed if isinstance(parsed, list) else [parsed]
    return tuple(str(p).strip() for p in items if str(p).strip())


def env_list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """A list variable (see :func:`parse_list`); empty when unset."""
    return parse_list(env.get(name))
