"""Every provider says why its server cannot be reached, through the one rule of ``network_error``.

The real command of each provider is pointed at (1) a port nothing listens on: "connection
refused", tried again for the few seconds of ``retry_refused`` only, never the engine's retry
budget; (2) a host name under ``.invalid``: "DNS name ... not found", not retried; (3) an HTTPS
server whose certificate no trusted CA signed: "TLS verification failed", naming the CA
variable of that provider. Each case is one parametrized test; the commands of all of them
start together (a few at a time), so the refused cases' seconds of waiting overlap.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from subprocess import CompletedProcess

import pytest

from storage_initializer.connect import REFUSED_RETRY_SECONDS
from storage_initializer.errors import REFUSED_HINT
from tests.cli import run_cli
from tests.unreachable import (
    DNS_NOT_FOUND,
    INVALID_HOST,
    REFUSED,
    TLS_FAILED,
    error_lines,
    refused_port,
    untrusted_https,
)

# The engine's own retries would show as "retrying ..." lines; one is enough to see them.
QUICK = {"STORAGE_INITIALIZER_RETRIES": "1", "STORAGE_INITIALIZER_RETRY_BACKOFF": "0.05"}


@dataclass(frozen=True)
class Case:
    """How to point one provider at ``scheme://host[:port]``: the URI and the environment."""

    target: Callable[[str, str, Path], tuple[str, dict[str, str]]]
    ca_variable: str  # what the TLS error must name


def _hdfs(scheme: str, host: str, scratch: Path) -> tuple[str, dict[str, str]]:
    secrets = scratch / "hdfs-secret"
    secrets.mkdir()
    (secrets / "HDFS_NAMENODE").write_text(f"{scheme}://{host}")
    return "hdfs:///models/iris", {"HDFS_SECRET_DIR": str(secrets)}


CASES: dict[str, Case] = {
    "http": Case(lambda s, h, _: (f"{s}://{h}/model.bin", {}), "REQUESTS_CA_BUNDLE"),
    "s3": Case(
        lambda s, h, _: (
            "s3://models/iris",
            {"AWS_ENDPOINT_URL": f"{s}://{h}", "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "x" * 20},
        ),
        "AWS_CA_BUNDLE",
    ),
    "gcs": Case(lambda s, h, _: ("gs://models/iris", {"STORAGE_EMULATOR_HOST": f"{s}://{h}"}), "REQUESTS_CA_BUNDLE"),
    "azure-blob": Case(
        lambda s, h, _: (
            "https://acct.blob.core.windows.net/models/iris",
            {"AZURE_STORAGE_CONNECTION_STRING": f"BlobEndpoint={s}://{h}/acct;"},
        ),
        "REQUESTS_CA_BUNDLE",
    ),
    "azure-file": Case(
        lambda s, h, _: (
            "https://acct.file.core.windows.net/models/iris",
            {"AZURE_STORAGE_CONNECTION_STRING": f"FileEndpoint={s}://{h}/acct;AccountKey=a2V5"},
        ),
        "REQUESTS_CA_BUNDLE",
    ),
    "hdfs": Case(_hdfs, "TLS_CA"),
    "model-registry": Case(
        lambda s, h, _: (f"model-registry://{h}/iris/v1", {"MODEL_REGISTRY_SCHEME": s}), "MODEL_REGISTRY_CA_BUNDLE"
    ),
    "oci": Case(
        lambda s, h, _: (f"oci://{h}/team/iris:v1", {"KSERVE_OCI_INSECURE_REGISTRY": "true"} if s == "http" else {}),
        "SSL_CERT_FILE",
    ),
    "git": Case(lambda s, h, _: (f"{s}://{h}/org/model.git", {}), "GIT_SSL_CAINFO"),
    "modelscope": Case(
        lambda s, h, _: ("modelscope://acme/model", {"MODELSCOPE_ENDPOINT": f"{s}://{h}"}), "REQUESTS_CA_BUNDLE"
    ),
    "hf": Case(
        lambda s, h, scratch: ("hf://acme/model", {"HF_ENDPOINT": f"{s}://{h}", "HF_HOME": str(scratch / "hf")}),
        "SSL_CERT_FILE",
    ),
}
KINDS = ("refused", "dns", "tls")


@dataclass
class Outcome:
    result: CompletedProcess[str]
    seconds: float


class Runs:
    """The command of every (provider, kind), started together at the first request."""

    def __init__(self, tls_host: str, scratch: Path) -> None:
        self.tls_host, self.scratch = tls_host, scratch
        self.pool = ThreadPoolExecutor(max_workers=4)
        self.futures: dict[tuple[str, str], Future[Outcome]] = {}

    def _run(self, name: str, kind: str) -> Outcome:
        scratch = Path(tempfile.mkdtemp(dir=self.scratch))
        with refused_port() as port:
            scheme, host = {
                "refused": ("http", f"127.0.0.1:{port}"),
                "dns": ("http", INVALID_HOST),
                "tls": ("https", self.tls_host),
            }[kind]
            uri, env = CASES[name].target(scheme, host, scratch)
            started = time.monotonic()
            result = run_cli(["-v", uri, str(scratch / "out")], {**QUICK, **env}, timeout=120)
            return Outcome(result, time.monotonic() - started)

    def get(self, name: str, kind: str) -> Outcome:
        if not self.futures:  # all at once: the refused cases' waits overlap
            # The slow ones first, so they overlap with the quick ones.
            order = sorted(((n, k) for n in CASES for k in KINDS), key=lambda case: case[1] != "refused")
            self.futures = {case: self.pool.submit(self._run, *case) for case in order}
        return self.futures[(name, kind)].result()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    with untrusted_https() as tls_host:
        runner = Runs(tls_host, tmp_path_factory.mktemp("unreachable"))
        try:
            yield runner
        finally:
            runner.pool.shutdown(cancel_futures=True)


def _the_error(outcome: Outcome) -> str:
    result = outcome.result
    assert result.returncode == 1, result.stderr
    (line,) = error_lines(result.stderr)
    assert "retrying" not in result.stderr, result.stderr  # never the engine's retry budget
    return line


@pytest.mark.parametrize("name", CASES)
def test_a_refused_connection_says_so_within_the_refused_retry_budget(runs: Runs, name: str) -> None:
    outcome = runs.get(name, "refused")
    line = _the_error(outcome)
    assert REFUSED in line and REFUSED_HINT in line, line
    assert "refused; trying again" in outcome.result.stderr  # a restarting server gets its few seconds
    # The few seconds of retry_refused, plus a process start on a busy machine; not the
    # engine's retries (tens of seconds).
    assert outcome.seconds < REFUSED_RETRY_SECONDS + 15


@pytest.mark.parametrize("name", CASES)
def test_an_unknown_host_is_dns_name_not_found_and_not_retried(runs: Runs, name: str) -> None:
    outcome = runs.get(name, "dns")
    line = _the_error(outcome)
    assert DNS_NOT_FOUND in line and "usually a typo" in line, line
    assert "trying again" not in outcome.result.stderr


@pytest.mark.parametrize("name", CASES)
def test_an_untrusted_certificate_names_the_ca_variable(runs: Runs, name: str) -> None:
    line = _the_error(runs.get(name, "tls"))
    assert TLS_FAILED in line and "unable to get local issuer certificate" in line, line
    assert CASES[name].ca_variable in line, line
