"""Server processes for tests and the benchmark: free ports, children that die with us, stopping.

Imported by the fixtures that run real servers (SeaweedFS, moto, fake-gcs-server,
Azurite, docker-registry) and by ``bench/servers.py``, so there is one copy.
"""

from __future__ import annotations

import ctypes
import signal
import socket
import subprocess
import sys

#: ``weed`` serves gRPC on every HTTP port + 10000.
GRPC_OFFSET = 10000


def free_port(*, with_grpc: bool = False, taken: frozenset[int] = frozenset()) -> int:
    """A free 127.0.0.1 port, not in ``taken``; ``with_grpc``: port + 10000 is free too (SeaweedFS's gRPC port)."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port in taken:
            continue
        if not with_grpc:
            return port
        if port + GRPC_OFFSET > 65535 or port + GRPC_OFFSET in taken:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + GRPC_OFFSET))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port found")


def die_with_parent() -> None:
    """Runs in the child (``preexec_fn``): SIGKILL it when its parent dies, so no server outlives a crash."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def stop_process(process: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """TERM, wait ``timeout`` s, then KILL (``weed`` may ignore TERM)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
