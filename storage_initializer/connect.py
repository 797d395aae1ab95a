"""A short, bounded retry of refused connections, for providers to wrap their requests in.

A refused connection means nothing listens at that address. Usually that is a wrong port,
which no retry heals; sometimes the server is restarting (a rolling update) or a sidecar
is still coming up, which takes a moment. :func:`retry_refused` tries again for a few
seconds, so the second case heals, and then lets the error go: the engine treats a
refused connection as permanent (see :func:`storage_initializer.errors.network_error`)
instead of spending its whole retry budget, tens of seconds, on a typo. A server that is
down for longer is covered one level up: the kubelet restarts a failed init container,
and the rerun resumes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from storage_initializer.errors import is_connection_refused

log = logging.getLogger("storage_initializer")

T = TypeVar("T")

#: How long refused connections are retried before the error is reported.
REFUSED_RETRY_SECONDS = 3.0


def retry_refused(call: Callable[[], T], what: str, budget: float | None = None) -> T:
    """``call()``, called again (0.2 s, 0.4 s, 0.8 s... apart) while its connection is refused.

    ``what`` names the server in the debug log (redacted there). After ``budget`` seconds
    (default :data:`REFUSED_RETRY_SECONDS`, read at each call) the last error is raised as it is.
    """
    deadline = time.monotonic() + (REFUSED_RETRY_SECONDS if budget is None else budget)
    delay = 0.2
    while True:
        try:
            return call()
        except Exception as exc:
            if not is_connection_refused(exc) or time.monotonic() + delay > deadline:
                raise
            log.debug("connection to %s refused; trying again in %.1fs", what, delay)
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
