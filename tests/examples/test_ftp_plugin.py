"""The third-party plugin example (examples/ftp) works like any pip-installed plugin.

It is installed with pip, as a user would, into a directory of its own that the
commands below put on PYTHONPATH: the plugin is then visible exactly as if it were
in site-packages (entry points are read from its ``.dist-info``), while the shared
test environment stays as it was. Then: ``--list-providers`` shows it, the real
command downloads through it from a real FTP server (pyftpdlib), and the plugin's
own test suite, which runs the shared conformance suite, passes against the
installed copy.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage_initializer.testing import ProviderConformance
from tests.cli import run_cli
from tests.servers.ftp_server import FtpServer
from tests.unreachable import error_lines, refused_port

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "ftp"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``pip install examples/ftp`` into a fresh directory (from a copy: no build/ in the tree)."""
    source = tmp_path_factory.mktemp("ftp-src")
    shutil.copytree(
        EXAMPLE, source, dirs_exist_ok=True, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    site = tmp_path_factory.mktemp("ftp-site")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (site / "storage_initializer_ftp.py").is_file()
    yield site


def plugin_env(site: Path, **extra: str) -> dict[str, str]:
    return {"PYTHONPATH": str(site), **extra}


def test_pip_installed_plugin_is_listed(plugin_site: Path) -> None:
    listed = run_cli(["--list-providers"], plugin_env(plugin_site))
    assert listed.returncode == 0, listed.stderr
    (line,) = [line for line in listed.stdout.splitlines() if line.startswith("ftp ")]
    assert "[storage-initializer-ftp 0.1.0]" in line and "prefix ftp://" in line
    assert "BROKEN" not in listed.stdout and "MISSING" not in listed.stdout
    # Without the installation it is not there: the listing comes from the installed metadata.
    if not any(d.metadata["Name"] == "storage-initializer-ftp" for d in importlib.metadata.distributions()):
        assert not any(line.startswith("ftp ") for line in run_cli(["--list-providers"]).stdout.splitlines())


def test_download_a_directory_through_the_plugin(plugin_site: Path, ftp_server: FtpServer, tmp_path: Path) -> None:
    d = ftp_server.new_dir()
    tree = {"config.json": b'{"a": 1}', "weights/part-1.bin": os.urandom(700_000), "empty.txt": b""}
    for key, data in tree.items():
        ftp_server.put(f"{d}/model/{key}", data)
    ftp_server.put(f"{d}/model-v2/other.bin", b"a sibling directory")
    dest = tmp_path / "out"
    result = run_cli([ftp_server.uri(f"{d}/model"), str(dest)], plugin_env(plugin_site, **ftp_server.env()))
    assert result.returncode == 0, result.stderr
    got = {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    assert {k: v for k, v in got.items() if not k.startswith(".storage-initializer")} == tree
    assert ftp_server.password not in result.stderr


def test_download_one_file_with_credentials_in_the_uri(
    plugin_site: Path, ftp_server: FtpServer, tmp_path: Path
) -> None:
    d = ftp_server.new_dir()
    data = os.urandom(3 * 1024 * 1024 + 5)
    ftp_server.put(f"{d}/model.onnx", data)
    env = plugin_env(plugin_site, STORAGE_INITIALIZER_PART_SIZE="1M", STORAGE_INITIALIZER_MULTIPART_THRESHOLD="1M")
    result = run_cli([ftp_server.uri(f"{d}/model.onnx", credentials=True), str(tmp_path)], env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "model.onnx").read_bytes() == data
    assert ftp_server.password not in result.stderr


def test_failures_name_the_uri_and_hide_the_password(plugin_site: Path, ftp_server: FtpServer, tmp_path: Path) -> None:
    missing = ftp_server.uri("no/such/model", credentials=True)
    result = run_cli([missing, str(tmp_path / "a")], plugin_env(plugin_site))
    assert result.returncode == 1
    (error,) = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert "no/such/model" in error and "no such file or directory" in error
    assert ftp_server.password not in result.stderr
    d = ftp_server.new_dir()
    ftp_server.put(f"{d}/m.bin", b"x")
    denied = run_cli(
        [ftp_server.uri(f"{d}/m.bin"), str(tmp_path / "b")],
        plugin_env(plugin_site, FTP_USERNAME=ftp_server.user, FTP_PASSWORD="not-the-password"),
    )
    assert denied.returncode == 1
    assert "FTP_PASSWORD" in denied.stderr and "not-the-password" not in denied.stderr


def test_an_unreachable_server_says_why(plugin_site: Path, tmp_path: Path) -> None:
    """The plugin types socket failures with the core's rule (network_error), like the built-ins."""
    with refused_port() as port:
        refused = run_cli([f"ftp://127.0.0.1:{port}/m.bin", str(tmp_path / "a")], plugin_env(plugin_site))
    assert refused.returncode == 1
    assert f"cannot reach ftp://127.0.0.1:{port}/m.bin: connection refused" in error_lines(refused.stderr)[-1]
    unknown = run_cli(["ftp://no-such-host.invalid/m.bin", str(tmp_path / "b")], plugin_env(plugin_site))
    assert unknown.returncode == 1
    assert "DNS name" in error_lines(unknown.stderr)[-1] and "retrying" not in unknown.stderr


def test_plugin_passes_the_shared_conformance_suite(plugin_site: Path, tmp_path: Path) -> None:
    """The plugin's own tests (examples/ftp/tests), run as its author would, against the installed copy."""
    env = {**os.environ, "PYTHONPATH": str(plugin_site)}
    where = subprocess.run(
        [sys.executable, "-c", "import storage_initializer_ftp as m; print(m.__file__)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert Path(where.stdout.strip()).parent == plugin_site, where.stderr
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(EXAMPLE / "pyproject.toml"), "--rootdir", str(EXAMPLE),
         "-p", "no:cacheprovider", "-v", str(EXAMPLE / "tests")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    outcomes = {  # "tests/test_ftp_provider.py::TestFtpConformance::test_x PASSED [ 6%]"
        line.split("::")[2].split()[0]: line.split()[1]
        for line in result.stdout.splitlines()
        if "::TestFtpConformance::" in line
    }
    suite = sorted(name for name in dir(ProviderConformance) if name.startswith("test_"))
    assert sorted(outcomes) == suite
    skipped = sorted(name for name, outcome in outcomes.items() if outcome != "PASSED")
    # A file system has no marker objects; pyftpdlib injects no transient failure or stall;
    # FTP reads are no HTTP GETs the engine's event loop could send.
    assert skipped == [
        "test_directory_markers_create_no_file",
        "test_http_range_reads_exact_bytes_on_the_event_loop",
        "test_stall_is_detected_and_retried",
        "test_transient_error_is_retried",
    ]
