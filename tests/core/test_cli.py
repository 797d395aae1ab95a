"""The command as KServe runs it: arguments, exit codes, logs, termination log."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli import clean_env, run_cli, tree
from tests.servers.http_server import Fault, HttpFileServer


def test_no_arguments_is_a_usage_error() -> None:
    result = run_cli([])
    assert result.returncode == 2
    assert "expected SRC_URI DEST_PATH pairs, got 0" in result.stderr


def test_odd_argument_count_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli(["http://127.0.0.1:1/a", str(tmp_path), "http://127.0.0.1:1/b"])
    assert result.returncode == 2
    assert "got 3 argument(s)" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_help_and_version() -> None:
    result = run_cli(["--help"])
    assert result.returncode == 0
    assert "SRC_URI DEST_PATH" in result.stdout
    assert run_cli(["--version"]).stdout.startswith("storage-initializer ")


def test_console_script_and_module_are_the_same_program(tmp_path: Path, http_server: HttpFileServer) -> None:
    url = http_server.add("/m/model.bin", b"weights")
    script = Path(sys.executable).with_name("storage-initializer")
    via_script = subprocess.run(
        [str(script), url, str(tmp_path / "a")], env=clean_env(), capture_output=True, text=True, timeout=60
    )
    via_module = run_cli([url, str(tmp_path / "b")])
    assert via_script.returncode == via_module.returncode == 0
    assert (tmp_path / "a/model.bin").read_bytes() == (tmp_path / "b/model.bin").read_bytes() == b"weights"


def test_list_providers_shows_formats_and_distributions() -> None:
    result = run_cli(["--list-providers"])
    assert result.returncode == 0
    assert "local  [storage-initializer 0.1.0]  prefix file://" in result.stdout
    assert "http  [storage-initializer-http 0.1.0]  prefix http://, prefix https:// (fallback)" in result.stdout


def test_broken_plugin_is_listed_with_a_hint_and_others_still_work(tmp_path: Path, http_server: HttpFileServer) -> None:
    # A distribution whose entry point names a module that does not exist.
    site = tmp_path / "site"
    dist = site / "broken_plugin-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[storage_initializer.providers]\nbroken = broken_plugin_missing:Provider\n")
    env = {"PYTHONPATH": str(site)}
    listing = run_cli(["--list-providers"], env)
    assert listing.returncode == 0
    assert "broken  [broken-plugin 1.0]  BROKEN: ModuleNotFoundError" in listing.stdout
    assert "pip install --force-reinstall 'broken-plugin'" in listing.stdout
    assert "http  [storage-initializer-http" in listing.stdout
    url = http_server.add("/ok.bin", b"ok")
    assert run_cli([url, str(tmp_path / "out")], env).returncode == 0


_MULTILINE_PLUGIN = """
from storage_initializer.provider import Provider, UriFormat

class Chatty(Provider):
    uri_formats = (UriFormat(prefix="chatty://"),)

    def list(self, uri):
        # As many SDK errors do (huggingface_hub's, for one): a message over several lines.
        raise RuntimeError("404 Client Error.\\n\\nRepository Not Found for url: x\\nPlease check the name.")

    def open_range(self, uri, obj, start, end):
        raise NotImplementedError
"""


def test_a_multi_line_error_is_still_one_line(tmp_path: Path) -> None:
    site = tmp_path / "site"
    dist = site / "chatty_plugin-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: chatty-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[storage_initializer.providers]\nchatty = chatty_plugin:Chatty\n")
    (site / "chatty_plugin.py").write_text(_MULTILINE_PLUGIN)
    termination = tmp_path / "termination-log"
    env = {"PYTHONPATH": str(site), "STORAGE_INITIALIZER_TERMINATION_LOG": str(termination)}
    result = run_cli(["chatty://repo", str(tmp_path / "out")], env)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "Repository Not Found" in errors[0] and "Please check the name." in errors[0]
    assert "Please check" not in result.stderr.replace(errors[0], "")  # no orphan continuation line
    assert termination.read_text().count("\n") == 1 and "Please check the name." in termination.read_text()


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("foo://bucket/model", "unknown URI scheme 'foo://' in foo://bucket/model"),
        ("s3:/bucket/model", "s3:/bucket/model is not a valid URI (did you mean s3://bucket/model?"),
        ("hfs://owner/repo", "unknown URI scheme 'hfs://' in hfs://owner/repo (did you mean h"),
        ("gcs://bucket/model", "unknown URI scheme 'gcs://' in gcs://bucket/model (did you mean gs://?"),
    ],
)
def test_an_unknown_scheme_is_one_short_line_with_a_suggestion(tmp_path: Path, uri: str, expected: str) -> None:
    result = run_cli([uri, str(tmp_path / "out")])
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert "--list-providers" in errors[0]
    assert len(errors[0]) < 300, errors[0]  # no list of every installed regex
    assert not (tmp_path / "out").exists()  # a malformed URI leaves no empty DEST behind


def test_an_existing_relative_path_is_local_as_in_kserve(tmp_path: Path) -> None:
    """KServe treats any path that exists as local; a relative one needs no ``./``."""
    (tmp_path / "models" / "iris").mkdir(parents=True)
    (tmp_path / "models" / "iris" / "model.bin").write_bytes(b"weights")
    result = run_cli(["models/iris", "out"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path / "out") == {"model.bin": b"weights"}
    missing = run_cli(["models/nope", "out2"], cwd=tmp_path)
    assert missing.returncode == 2
    (error,) = [line for line in missing.stderr.splitlines() if " ERROR " in line]
    assert f"models/nope: no such file or directory in {tmp_path} (a path without a scheme is local;" in error
    assert "--list-providers" in error and len(error) - len(str(tmp_path)) < 250


def test_download_logs_start_source_and_summary(tmp_path: Path, http_server: HttpFileServer) -> None:
    url = http_server.add("/models/model.onnx", os.urandom(300_000))
    result = run_cli([url, str(tmp_path / "new" / "dir")])
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "new/dir/model.onnx").read_bytes() == http_server.files["/models/model.onnx"]
    assert f"start: {url} -> {tmp_path}/new/dir" in result.stderr
    assert "provider HttpProvider" in result.stderr
    assert "summary: 1 file, 300000 bytes (293.0 KiB) in " in result.stderr and " MiB/s" in result.stderr
    assert "MB/s" not in result.stderr and "1 files" not in result.stderr
    assert "storage-initializer 0.1.0: 1 source\n" in result.stderr


def test_several_pairs_each_land_in_their_own_dest(tmp_path: Path, http_server: HttpFileServer) -> None:
    a = http_server.add("/a/model.bin", b"A" * 1000)
    b = http_server.add("/b/tokenizer.json", b"{}")
    result = run_cli([a, str(tmp_path / "one"), b, str(tmp_path / "two")])
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "one/model.bin").read_bytes() == b"A" * 1000
    assert (tmp_path / "two/tokenizer.json").read_bytes() == b"{}"


def test_one_failing_pair_fails_the_run_and_is_reported(tmp_path: Path, http_server: HttpFileServer) -> None:
    good = http_server.add("/good.bin", b"good")
    missing = http_server.url + "/missing.bin"
    termination = tmp_path / "termination-log"
    result = run_cli(
        [good, str(tmp_path / "one"), missing, str(tmp_path / "two")],
        {"STORAGE_INITIALIZER_TERMINATION_LOG": str(termination)},
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1
    assert f"failed to download {missing} to {tmp_path}/two" in errors[0] and "HTTP 404" in errors[0]
    assert (tmp_path / "one/good.bin").read_bytes() == b"good"
    assert termination.read_text().startswith(f"failed to download {missing}")


def test_credentials_never_appear_in_output(tmp_path: Path, http_server: HttpFileServer) -> None:
    url = http_server.url.replace("http://", "http://alice:s3cr3t-pass@") + "/nope.bin?sig=SIGNATURE123&sv=1"
    termination = tmp_path / "termination-log"
    env = {
        "STORAGE_INITIALIZER_TERMINATION_LOG": str(termination),
        "127.0.0.1-headers": '{"Authorization": "Bearer tok-abcdef-123"}',
    }
    result = run_cli(["-v", url, str(tmp_path / "out")], env)
    assert result.returncode == 1
    everything = result.stdout + result.stderr + termination.read_text()
    for secret in ("s3cr3t-pass", "SIGNATURE123", "tok-abcdef-123"):
        assert secret not in everything
    assert "sv=1" in result.stderr  # the rest of the URL stays readable


def test_patterns_from_env_and_flags(tmp_path: Path) -> None:
    source = tmp_path / "src"
    for name in ("config.json", "model.safetensors", "model.bin", "tok/vocab.json"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text(name)
    json_env = run_cli([str(source), str(tmp_path / "a")], {"STORAGE_ALLOW_PATTERNS": '["*.json"]'})
    assert json_env.returncode == 0, json_env.stderr
    assert sorted(tree(tmp_path / "a")) == ["config.json", "tok/vocab.json"]
    comma_env = run_cli([str(source), str(tmp_path / "b")], {"STORAGE_IGNORE_PATTERNS": "*.bin, tok/*"})
    assert sorted(tree(tmp_path / "b")) == ["config.json", "model.safetensors"]
    assert comma_env.returncode == 0
    flags = run_cli(["--allow-pattern", "*.safetensors", "--allow-pattern", "*.bin", str(source), str(tmp_path / "c")])
    assert flags.returncode == 0
    assert sorted(tree(tmp_path / "c")) == ["model.bin", "model.safetensors"]
    nothing = run_cli([str(source), str(tmp_path / "d")], {"STORAGE_ALLOW_PATTERNS": "*.onnx"})
    assert nothing.returncode == 1
    assert "matches the allow/ignore patterns" in nothing.stderr


def test_quiet_verbose_and_env_log_level(tmp_path: Path, http_server: HttpFileServer) -> None:
    url = http_server.add("/m.bin", b"m")
    quiet = run_cli(["--quiet", url, str(tmp_path / "q")])
    assert quiet.returncode == 0 and quiet.stderr == ""
    env_quiet = run_cli([url, str(tmp_path / "e")], {"STORAGE_INITIALIZER_LOG_LEVEL": "WARNING"})
    assert env_quiet.stderr == ""
    verbose = run_cli(["--verbose", url, str(tmp_path / "v")])
    assert " DEBUG downloaded m.bin" in verbose.stderr


def test_bad_setting_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli(["/x", str(tmp_path)], {"STORAGE_INITIALIZER_CONCURRENCY": "many"})
    assert result.returncode == 2
    assert "STORAGE_INITIALIZER_CONCURRENCY='many' is not a number" in result.stderr


def test_bad_setting_reaches_the_termination_log(tmp_path: Path) -> None:
    # An invalid variable is the commonest misconfiguration in a pod: `kubectl describe` must show it.
    termination = tmp_path / "termination-log"
    env = {"STORAGE_INITIALIZER_TERMINATION_LOG": str(termination), "STORAGE_INITIALIZER_RETRIES": "lots"}
    result = run_cli(["/x", str(tmp_path / "out")], env)
    assert result.returncode == 2
    assert "STORAGE_INITIALIZER_RETRIES='lots' is not a number" in termination.read_text()


@pytest.mark.parametrize(
    "flag",
    [
        ["--stall-timeout", "0"],
        ["--stall-timeout", "nan"],
        ["--stall-timeout", "inf"],
        ["--concurrency", "0"],
        ["--retries", "-1"],
    ],
)
def test_out_of_range_options_are_usage_errors(tmp_path: Path, flag: list[str]) -> None:
    result = run_cli([*flag, "/x", str(tmp_path / "out")])
    assert result.returncode == 2, result.stderr
    assert (
        "Invalid value" in result.stderr or "not a finite number" in result.stderr
    ) and "Traceback" not in result.stderr


def test_heartbeat_reports_progress_on_long_transfers(tmp_path: Path, http_server: HttpFileServer) -> None:
    url = http_server.add("/slow.bin", os.urandom(2_000_000))
    http_server.faults["/slow.bin"] = Fault(stall_after=1_000_000, stall_seconds=1.5, stall_times=1)
    result = run_cli([url, str(tmp_path / "out")], {"STORAGE_INITIALIZER_HEARTBEAT": "0.3"})
    assert result.returncode == 0, result.stderr
    beats = [line for line in result.stderr.splitlines() if " progress: " in line]
    assert beats, result.stderr
    assert "/ 1.9 MiB" in beats[-1] and "files 0/1" in beats[-1]


def test_heartbeat_with_an_unknown_size_claims_no_total(tmp_path: Path, http_server: HttpFileServer) -> None:
    url = http_server.add("/chunked.bin", os.urandom(3_000_000), chunked=True, ranges=False)  # size unknown
    # Two stalls: the probe (answered with the whole body, no ranges) may take the first one.
    http_server.faults["/chunked.bin"] = Fault(stall_after=2_500_000, stall_seconds=1.5, stall_times=2)
    result = run_cli([url, str(tmp_path / "out")], {"STORAGE_INITIALIZER_HEARTBEAT": "0.3"})
    assert result.returncode == 0, result.stderr
    beats = [line for line in result.stderr.splitlines() if " progress: " in line]
    assert beats, result.stderr
    assert "/ 0 B" not in beats[-1] and "/ unknown" in beats[-1] and "ETA" not in beats[-1]


def test_progress_bar_only_on_a_terminal(tmp_path: Path, http_server: HttpFileServer) -> None:
    url = http_server.add("/tty.bin", os.urandom(1_000_000))
    http_server.faults["/tty.bin"] = Fault(stall_after=500_000, stall_seconds=1.0, stall_times=1)
    main, secondary = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "storage_initializer", url, str(tmp_path / "out")],
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=secondary,
    )
    os.close(secondary)
    output = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            chunk = os.read(main, 65536)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    assert proc.wait(timeout=60) == 0
    os.close(main)
    text = output.decode(errors="replace")
    assert "\r\x1b[K" in text and "files 0/1" in text
    assert " progress: " not in text  # the bar replaces the heartbeat log lines


@pytest.mark.parametrize("dest_kind", ["file", "unwritable"])
def test_unusable_dest_is_a_clear_error(tmp_path: Path, http_server: HttpFileServer, dest_kind: str) -> None:
    url = http_server.add("/m.bin", b"m")
    dest = tmp_path / "dest"
    if dest_kind == "file":
        dest.write_text("i am a file")
        result = run_cli([url, str(dest)])
        assert "exists and is not a directory" in result.stderr
        assert dest.read_text() == "i am a file"
    else:
        # Tests run as root, which ignores permission bits: an immutable
        # directory is one that even root cannot write into.
        dest.mkdir()
        subprocess.run(["chattr", "+i", str(dest)], check=True)
        try:
            result = run_cli([url, str(dest / "sub")])
            later = run_cli([url, str(dest)])
        finally:
            subprocess.run(["chattr", "-i", str(dest)], check=True)
        assert "cannot create DEST_PATH" in result.stderr
        assert later.returncode == 1 and "failed to download" in later.stderr
        assert list(dest.iterdir()) == []
    assert result.returncode == 1


def test_after_a_failure_the_error_is_the_last_line(tmp_path: Path, http_server: HttpFileServer) -> None:
    """`kubectl logs` shows the end of the log: it must end on the cause, not on an INFO summary."""
    good = http_server.add("/good.bin", b"good")
    missing = http_server.url + "/missing.bin"
    result = run_cli([good, str(tmp_path / "one"), missing, str(tmp_path / "two")])
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert " ERROR failed to download " in lines[-1] and missing in lines[-1]
    (summary,) = [line for line in lines if " summary: " in line]
    assert "summary: FAILED (1 of 2 sources): 1 file, 4 bytes" in summary


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stopping_signal_exits_128_plus_its_number(
    tmp_path: Path, http_server: HttpFileServer, signum: int, status: int
) -> None:
    url = http_server.add("/stuck.bin", os.urandom(100_000), ranges=False)
    http_server.faults["/stuck.bin"] = Fault(hold_from=0, hold_seconds=30)
    log = tmp_path / "stderr"
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "storage_initializer", url, str(tmp_path / "out")],
            env=clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        # Signal once the server holds a request of the file (a fixed wait after the start-up
        # line could end before a slow machine sent it).
        deadline = time.monotonic() + 30
        while not any(r.path == "/stuck.bin" and r.method == "GET" for r in http_server.requests):
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
            time.sleep(0.02)
        proc.send_signal(signum)
        assert proc.wait(timeout=20) == status
    text = log.read_text()
    assert f"received {signal.Signals(signum).name}: stopping" in text
    assert " ERROR " in text.splitlines()[-1]


def test_help_names_the_real_variables() -> None:
    text = " ".join(run_cli(["--help"]).stdout.split())
    assert "[STORAGE_ALLOW_PATTERNS]" in text and "[STORAGE_IGNORE_PATTERNS]" in text
    assert "[STORAGE_INITIALIZER_LOCAL_LINK=true]" in text and "130 after SIGINT, 143 after SIGTERM" in text
    assert "Every option also has a STORAGE_INITIALIZER_*" not in text


# -- local sources: a copy by default, links on request, never onto themselves -----------------
def _local_source(tmp_path: Path) -> Path:
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "sub/w.bin").write_bytes(b"w" * 1000)
    (source / "big.bin").write_bytes(b"b" * (3 * 1024 * 1024))  # through the multipart path too
    return source


def test_a_local_source_is_copied_by_default(tmp_path: Path) -> None:
    """A model server writing into DEST must not edit the source volume."""
    source = _local_source(tmp_path)
    result = run_cli([str(source), str(tmp_path / "dest")], {"STORAGE_INITIALIZER_MULTIPART_THRESHOLD": "1M"})
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path / "dest") == tree(source)
    for name in ("sub/w.bin", "big.bin"):
        assert (tmp_path / "dest" / name).stat().st_ino != (source / name).stat().st_ino
    with (tmp_path / "dest/sub/w.bin").open("r+b") as handle:  # what a careless model server might do
        handle.write(b"edited")
    assert (source / "sub/w.bin").read_bytes() == b"w" * 1000


@pytest.mark.parametrize("how", ["flag", "variable"])
def test_hard_links_are_an_explicit_choice(tmp_path: Path, how: str) -> None:
    source = _local_source(tmp_path)
    dest = tmp_path / "dest"
    if how == "flag":
        result = run_cli(["--link", f"file://{source}", str(dest)])
    else:
        result = run_cli([f"file://{source}", str(dest)], {"STORAGE_INITIALIZER_LOCAL_LINK": "true"})
    assert result.returncode == 0, result.stderr
    for name in ("sub/w.bin", "big.bin"):
        assert (dest / name).stat().st_ino == (source / name).stat().st_ino
        assert not (dest / name).is_symlink()


def test_a_bad_link_value_is_a_configuration_error(tmp_path: Path) -> None:
    result = run_cli(
        [str(_local_source(tmp_path)), str(tmp_path / "dest")], {"STORAGE_INITIALIZER_LOCAL_LINK": "maybe"}
    )
    assert result.returncode == 2 and "STORAGE_INITIALIZER_LOCAL_LINK='maybe' is not a boolean" in result.stderr


@pytest.mark.parametrize("form", ["same", "same-relative", "file-uri", "file-in-its-directory"])
def test_src_and_dest_the_same_directory_is_refused(tmp_path: Path, form: str) -> None:
    source = _local_source(tmp_path)
    before = tree(source)
    src, dest = {
        "same": (str(source), str(source)),
        "same-relative": ("src", "./src/"),
        "file-uri": (f"file://{source}/sub", str(source / "sub" / ".." / "sub")),
        "file-in-its-directory": (str(source / "big.bin"), str(source)),
    }[form]
    result = run_cli([src, dest], cwd=tmp_path)
    assert result.returncode == 2
    assert "storage-initializer: error: " in result.stderr and "(choose another DEST_PATH)" in result.stderr
    assert "the same directory" in result.stderr or "copied onto itself" in result.stderr
    assert tree(source) == before and sorted(p.name for p in source.iterdir()) == ["big.bin", "sub"]


def test_a_server_without_ranges_is_mentioned_only_when_it_matters(tmp_path: Path, http_server: HttpFileServer) -> None:
    small = http_server.add("/small.bin", b"8 bytes!", ranges=False)
    quiet = run_cli([small, str(tmp_path / "a")])
    assert quiet.returncode == 0 and "byte ranges" not in quiet.stderr  # one stream anyway: nothing lost
    verbose = run_cli(["-v", small, str(tmp_path / "b")])
    assert " DEBUG " in next(line for line in verbose.stderr.splitlines() if "does not serve byte ranges" in line)
    unknown = http_server.add("/unknown.bin", b"x" * 1000, chunked=True, ranges=False)  # could be any size
    said = run_cli([unknown, str(tmp_path / "c")])
    assert said.returncode == 0
    assert " INFO " in next(line for line in said.stderr.splitlines() if "does not serve byte ranges" in line)
