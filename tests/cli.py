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
