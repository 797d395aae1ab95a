"""Run the real command in a subprocess, as KServe runs the init container."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence

# Variables from the developer's shell that would change what a test sees.
_SCRUB = (
    "AWS_",
    "AZURE_",
    "AZ_",
    "GOOGLE_",
    "HF_",
    "STORAGE_",
    "S3_",
    "MODEL_REGISTRY_",
    "HDFS_",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
    "REQUESTS_CA_BUNDLE",
    "SSL_CERT_FILE",
    "CURL_CA_BUNDLE",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
    "GCE_",
    "NO_GCE_CHECK",
    "CLOUDSDK_",
    "API_ENDPOINT_OVERRIDE",
)


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUB)}
    env["STORAGE_INITIALIZER_HEARTBEAT"] = env.get("STORAGE_INITIALIZER_HEARTBEAT", "60")
    env.update(extra or {})
    return env


def run_cli(
    args: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 120, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    """``python -m storage_initializer ARGS`` with a scrubbed environment plus ``env``."""
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-m", "storage_initializer", *args],
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def tree(root: object) -> dict[str, bytes]:
    """Relative path -> bytes of every file under ``root``, without the engine's state dir."""
    from pathlib import Path

    base = Path(str(root))
    return {
        p.relative_to(base).as_posix(): p.read_bytes()
        for p in sorted(base.rglob("*"))
        if p.is_file() and not p.relative_to(base).as_posix().startswith(".storage-initializer")
    }


def run_cli_peak_rss(
    args: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 300
) -> tuple[subprocess.CompletedProcess[str], int]:
    """Like :func:`run_cli`, plus the command's own peak RSS in KiB.

    ``os.wait4`` gives the resource usage of exactly this child (the
    process-wide ``RUSAGE_CHILDREN`` would be the largest of every child the
    test session ever waited for, servers included).
    """
    import tempfile
    import threading

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "storage_initializer", *args], env=clean_env(env), stdout=out, stderr=err, text=True
        )
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        result = subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read())
    return result, usage.ru_maxrss
