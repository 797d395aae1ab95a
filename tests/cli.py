"""Run the real command in a subprocess, as KServe runs the init container."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from storage_initializer.provider import Plugin

_P = TypeVar("_P", bound="Plugin")

# Variables from the developer's shell that would change what a test sees.
_SCRUB = (
    "AWS_",
    "AZURE_",
    "AZ_",
    "GOOGLE_",
    "HF_",
    "MODELSCOPE_",
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


def tree(root: object, *, after_failure: bool = False, hidden: bool = True) -> dict[str, bytes]:
    """Relative path -> bytes of every file under ``root``.

    After a successful run DEST holds the model and nothing else, so state and temporary
    files count; ``after_failure`` leaves out the resume state a failed run keeps, and
    ``hidden=False`` every dot-file or dot-folder (an SDK's own bookkeeping, such as ``.cache``).
    """
    from pathlib import Path

    base = Path(str(root))
    found = {}
    for p in sorted(base.rglob("*")):
        parts = p.relative_to(base).parts
        if not p.is_file() or (after_failure and parts[0] == ".storage-initializer"):
            continue
        if hidden or not any(part.startswith(".") for part in parts):
            found[p.relative_to(base).as_posix()] = p.read_bytes()
    return found


_PEAK_RSS_WRAPPER = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[3:], timeout=float(sys.argv[2]))  # kills the command on timeout
with open(sys.argv[1], "w") as f:
    f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(code)
"""


def run_cli_peak_rss(
    args: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 300
) -> tuple[subprocess.CompletedProcess[str], int]:
    """Like :func:`run_cli`, plus the command's own peak RSS in KiB.

    The command is started from a small wrapper process that reports its
    ``RUSAGE_CHILDREN``: on Linux a child's ``ru_maxrss`` includes the
    high-water RSS of the process it was forked from (``exec`` keeps the old
    address space's peak), so measuring straight from the test session would
    report the session's own size, servers' listings and all.
    """
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "maxrss")
        wrapper = [
            sys.executable,
            "-c",
            _PEAK_RSS_WRAPPER,
            report,
            str(timeout),
            sys.executable,
            "-m",
            "storage_initializer",
        ]
        result = subprocess.run(
            [*wrapper, *args], env=clean_env(env), capture_output=True, text=True, timeout=timeout + 30, check=False
        )
        assert os.path.exists(report), f"the command did not finish within {timeout}s:\n{result.stderr}"
        with open(report) as f:
            peak_kib = int(f.read())
    result.args = [sys.executable, "-m", "storage_initializer", *args]
    return result, peak_kib


def error_line(stderr: str) -> str:
    """The one ``ERROR`` log line of a failed run (fails the test unless there is exactly one)."""
    lines = [line for line in stderr.splitlines() if " ERROR " in line]
    assert len(lines) == 1, stderr
    return lines[0]


def make_provider(cls: type[_P], env: Mapping[str, str], **context: Any) -> _P:
    """``cls`` as the engine creates it, with test timeouts (``context`` overrides them)."""
    from storage_initializer.provider import ProviderContext

    return cls(ProviderContext(env=dict(env), **{"stall_timeout": 10.0, "concurrency": 4, **context}))


def download_one(name: str, cls: type, uri: str, dest: object, env: Mapping[str, str], **overrides: Any) -> None:
    """One download in process through the real engine, with only ``cls`` registered (as ``name``).

    Raises the pair's error. Test settings: 4 workers, 10 s stall timeout, 2 quick retries.
    """
    from storage_initializer.registry import Registry
    from storage_initializer.runner import download
    from storage_initializer.settings import Settings

    settings = Settings(
        env=dict(env), concurrency=4, stall_timeout=10, retries=2, retry_backoff=0.05, heartbeat_seconds=60
    ).with_overrides(**overrides)
    (result,) = download([(uri, str(dest))], settings=settings, registry=Registry.from_classes({name: cls}))
    if result.error is not None:
        raise result.error
