"""Shared test configuration.

Every module in ``tests/servers/`` that is not a test module is loaded as a
pytest plugin, so a server fixture is available to every test by dropping its
module there.
"""

from __future__ import annotations

import pkgutil
from pathlib import Path

_SERVERS = Path(__file__).parent / "servers"

pytest_plugins = [
    f"tests.servers.{module.name}"
    for module in pkgutil.iter_modules([str(_SERVERS)])
    if not module.name.startswith(("test_", "_")) and module.name != "processes"  # helpers, no fixtures
] + ["tests.unreachable"]
