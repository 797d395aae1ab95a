"""The transfer engine through the CLI and the Python API: bytes, faults, resume, safety."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage_initializer import download
from storage_initializer.errors import IntegrityError, NotFoundError, UnsafePathError
from storage_initializer.provider import RemoteObject
from storage_initializer.registry import Registry
from storage_initializer.settings import MiB, Settings
from tests.cli import clean_env, run_cli, run_cli_peak_rss, tree
from tests.core.memory_provider import MemoryProvider, memory_registry
from tests.servers.http_server import Fault, HttpFileServer

FAST = {
    "STORAGE_INITIALIZER_RETRY_BACKOFF": "0.05",
    "STORAGE_INITIALIZER_PART_SIZE": "1M",
    "STORAGE_INITIALIZER_MULTIPART_THRESHOLD": "2M",
}


@pytest.fixture(autouse=True)
def _reset_memory() -> Iterator[None]:
    MemoryProvider.reset()
    yield
    MemoryProvider.reset()


def _settings(**overrides: object) -> Settings:
    base = Settings(concurrency=4, retries=2, retry_backoff=0.01, heartbeat_seconds=60)
    return base.with_overrides(**overrides)


def _fetch(uri: str, dest: Path, **overrides: object) -> None:
    (result,) = download([(uri, str(dest))], settings=_settings(**overrides), registry=memory_registry())
    if result.error is not None:
        raise result.error


# -- faults over real HTTP --------------------------------------------------------
def test_multipart_download_survives_a_cut_connection(tmp_path: Path, http_server: HttpFileServer) -> None:
    data = os.urandom(6 * MiB + 123)
    url = http_server.add("/m/model.bin", data)
    http_server.faults["/m/model.bin"] = Fault(cut_after=300_000, cut_times=2)
    result = run_cli([url, str(tmp_path / "out")], FAST)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out/model.bin").read_bytes() == data
    assert "retrying model.bin part" in result.stderr and "the connection ended after" in result.stderr
    ranges = [r.range for r in http_server.requests if r.method == "GET"]
    assert sum(1 for r in ranges if r and r != "bytes=0-0") >= 9  # 7 parts, plus 2 resumed tails
    # A retry continues where the connection broke: the cut bytes are not fetched again.
    assert http_server.bytes_sent < len(data) + 100_000


@pytest.mark.parametrize("codes", [[503, 500], [429, 429, 502]])
@pytest.mark.parametrize(("skip", "what"), [(0, "the listing"), (1, "s.bin")], ids=["probe", "read"])
def test_transient_statuses_are_retried(
    tmp_path: Path, http_server: HttpFileServer, codes: list[int], skip: int, what: str
) -> None:
    """Both the size probe (the listing) and the data read retry a 5xx/429: ``skip=1`` lets the
    probe through, so the statuses reach the read itself."""
    url = http_server.add("/s.bin", b"payload" * 1000)
    http_server.faults["/s.bin"] = Fault(status_codes=list(codes), status_skip=skip)
    result = run_cli([url, str(tmp_path / "out")], {**FAST, "STORAGE_INITIALIZER_RETRIES": "3"})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out/s.bin").read_bytes() == b"payload" * 1000
    assert result.stderr.count("retrying") == result.stderr.count(f"retrying {what} of") == len(codes)


def test_a_stall_is_a_transient_error_not_a_hang(tmp_path: Path, http_server: HttpFileServer) -> None:
    data = os.urandom(500_000)
    url = http_server.add("/stall.bin", data)
    http_server.faults["/stall.bin"] = Fault(stall_after=100_000, stall_seconds=30, stall_times=1)
    started = time.monotonic()
    result = run_cli([url, str(tmp_path / "out")], {**FAST, "STORAGE_INITIALIZER_STALL_TIMEOUT": "1"})
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 20
    assert (tmp_path / "out/stall.bin").read_bytes() == data
    assert "retrying stall.bin" in result.stderr


def test_persistent_failure_gives_up_in_bounded_time(tmp_path: Path, http_server: HttpFileServer) -> None:
    url = http_server.add("/down.bin", b"x")
    http_server.faults["/down.bin"] = Fault(status_codes=[500] * 100)
    started = time.monotonic()
    result = run_cli([url, str(tmp_path / "out")], {**FAST, "STORAGE_INITIALIZER_RETRIES": "2"})
    assert result.returncode == 1
    assert time.monotonic() - started < 20
    assert "HTTP 500" in result.stderr and "gave up after 2 retries" in result.stderr
    assert tree(tmp_path / "out") == {}


def test_permanent_errors_are_not_retried(tmp_path: Path, http_server: HttpFileServer) -> None:
    url = http_server.add("/private.bin", b"x", require_headers={"Authorization": "Bearer right"})
    result = run_cli([url, str(tmp_path / "out")], FAST)
    assert result.returncode == 1
    assert "retrying" not in result.stderr
    assert "HTTP 401" in result.stderr and "<hostname>-headers" in result.stderr
    ok = run_cli([url, str(tmp_path / "ok")], {**FAST, "127.0.0.1-headers": '{"Authorization": "Bearer right"}'})
    assert ok.returncode == 0, ok.stderr


def test_object_replaced_mid_download_is_never_spliced(tmp_path: Path, http_server: HttpFileServer) -> None:
    old, new = os.urandom(6 * MiB), os.urandom(6 * MiB)
    url = http_server.add("/swap.bin", old)
    http_server.faults["/swap.bin"] = Fault(replace_after=2 * MiB, replacement=new)
    result = run_cli([url, str(tmp_path / "out")], {**FAST, "STORAGE_INITIALIZER_CONCURRENCY": "2"})
    assert result.returncode == 1
    assert "changed during the download" in result.stderr
    assert not (tmp_path / "out/swap.bin").exists()
    assert list((tmp_path / "out").iterdir()) == []  # nothing worth resuming: nothing left
    again = run_cli([url, str(tmp_path / "out")], FAST)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "out/swap.bin").read_bytes() == new


def test_server_without_ranges_is_read_in_one_stream(tmp_path: Path, http_server: HttpFileServer) -> None:
    data = os.urandom(5 * MiB)
    url = http_server.add("/plain.bin", data, ranges=False, chunked=True)
    # Two cuts: the one-byte probe (answered with the whole body) may take one.
    http_server.faults["/plain.bin"] = Fault(cut_after=MiB, cut_times=2)
    result = run_cli([url, str(tmp_path / "out")], FAST)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out/plain.bin").read_bytes() == data
    assert "does not serve byte ranges" in result.stderr
    assert "retrying plain.bin" in result.stderr


def test_server_without_ranges_that_keeps_breaking_gives_up(tmp_path: Path, http_server: HttpFileServer) -> None:
    # Every attempt delivers 2 MiB and breaks: without ranges the bytes are lost
    # each time, so they are no progress and the retry budget still runs out.
    url = http_server.add("/flaky.bin", os.urandom(8 * MiB), ranges=False)
    http_server.faults["/flaky.bin"] = Fault(cut_after=2 * MiB, cut_times=1000)
    started = time.monotonic()
    result = run_cli([url, str(tmp_path / "out")], {**FAST, "STORAGE_INITIALIZER_RETRIES": "2"}, timeout=60)
    assert result.returncode == 1, result.stderr
    assert time.monotonic() - started < 30
    assert "gave up after 2 retries" in result.stderr
    assert sum(1 for r in http_server.requests if r.method == "GET" and r.path == "/flaky.bin") <= 5
    assert tree(tmp_path / "out") == {}


def test_two_sources_writing_one_file_in_one_dest_are_refused(tmp_path: Path, http_server: HttpFileServer) -> None:
    first, second = os.urandom(4 * MiB), os.urandom(4 * MiB)
    url_a = http_server.add("/a/model.bin", first)
    url_b = http_server.add("/b/model.bin", second)
    http_server.faults["/b/model.bin"] = Fault(stall_after=MiB, stall_seconds=0.5, stall_times=1)
    dest = tmp_path / "out"
    result = run_cli([url_a, str(dest), url_b, str(dest)], FAST)
    assert result.returncode == 1
    assert "two sources write the same file 'model.bin' in one DEST" in result.stderr
    # One source won whole; nothing of the other is mixed in.
    assert tree(dest, after_failure=True) in ({"model.bin": first}, {"model.bin": second})


def test_two_sources_with_distinct_files_share_one_dest(tmp_path: Path, http_server: HttpFileServer) -> None:
    url_a = http_server.add("/a/config.json", b"{}")
    url_b = http_server.add("/b/weights.bin", b"w" * 1000)
    dest = tmp_path / "out"
    result = run_cli([url_a, str(dest), url_b, str(dest)], FAST)
    assert result.returncode == 0, result.stderr
    assert tree(dest) == {"config.json": b"{}", "weights.bin": b"w" * 1000}


@pytest.mark.parametrize("length", [243, 244, 250, 255])
@pytest.mark.parametrize("size", [1000, 3 * MiB])  # whole and multi-part (copied)
def test_names_up_to_the_filesystem_limit_download(tmp_path: Path, length: int, size: int) -> None:
    source = tmp_path / "src"
    source.mkdir()
    name = "m" * (length - 4) + ".bin"
    data = os.urandom(size)
    (source / name).write_bytes(data)
    (source / "small.txt").write_bytes(b"small")
    result = run_cli([str(source), str(tmp_path / "dest")], FAST)
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path / "dest") == {name: data, "small.txt": b"small"}


def test_a_file_that_fails_while_planned_is_never_dropped(tmp_path: Path) -> None:
    # The listing is retried on transient errors; a file whose own placement
    # failed must not be skipped by that retry as "already planned".
    class FlakyPlacement(MemoryProvider):
        failures = 1

        def download_to(self, uri: str, obj: RemoteObject, path: str) -> bool:
            if obj.key == "big.bin" and FlakyPlacement.failures:
                FlakyPlacement.failures -= 1
                raise ConnectionResetError("reset while placing the file")
            return False

    MemoryProvider.objects.update({"m/big.bin": os.urandom(3 * MiB), "m/small.txt": b"s"})
    (result,) = download(
        [("mem://m", str(tmp_path / "out"))],
        settings=_settings(part_size=MiB, multipart_threshold=2 * MiB),
        registry=Registry.from_classes({"mem": FlakyPlacement}),
    )
    assert result.error is not None, "big.bin was dropped and the run called a success"
    assert "connection reset" in str(result.error)
    assert "big.bin" not in tree(tmp_path / "out")
    (again,) = download(
        [("mem://m", str(tmp_path / "out"))],
        settings=_settings(part_size=MiB, multipart_threshold=2 * MiB),
        registry=Registry.from_classes({"mem": FlakyPlacement}),
    )
    assert again.error is None
    assert tree(tmp_path / "out") == {"big.bin": MemoryProvider.objects["m/big.bin"], "small.txt": b"s"}


def test_a_state_path_blocked_by_a_file_is_a_local_error(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.bin").write_bytes(b"a")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / ".storage-initializer").write_bytes(b"not a directory")
    result = run_cli([str(source), str(dest)], FAST)
    assert result.returncode == 1
    assert "local file error on" in result.stderr and ".storage-initializer" in result.stderr
    assert "network" not in result.stderr and "retrying" not in result.stderr


# -- resume -------------------------------------------------------------------------
def _partial_records(dest: Path) -> list[dict[str, object]]:
    records = []
    for path in (dest / ".storage-initializer/partial").glob("*.json"):
        with contextlib.suppress(ValueError):
            records.append(json.loads(path.read_text()))
    return records


def _start_stuck_download(http_server: HttpFileServer, dest: Path) -> tuple[subprocess.Popen[bytes], bytes, str]:
    data = os.urandom(12 * MiB)
    url = http_server.add("/big/model.bin", data)
    http_server.faults["/big/model.bin"] = Fault(hold_from=6 * MiB, hold_seconds=60)
    env = clean_env({**FAST, "STORAGE_INITIALIZER_CONCURRENCY": "3"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "storage_initializer", url, str(dest)], env=env, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        records = _partial_records(dest)
        if records and len(records[0]["done"]) >= 5:  # type: ignore[arg-type]
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("the download never got going")
    return proc, data, url


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_download_resumes_and_fetches_only_what_was_missing(
    tmp_path: Path, http_server: HttpFileServer, sig: signal.Signals
) -> None:
    dest = tmp_path / "out"
    proc, data, url = _start_stuck_download(http_server, dest)
    killed_at = time.monotonic()
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=30)
    if sig == signal.SIGTERM:
        assert proc.returncode == 143
        assert time.monotonic() - killed_at < 8
        assert b"received SIGTERM" in stderr
    assert not (dest / "model.bin").exists()  # nothing incomplete under the final name
    done_parts = len(_partial_records(dest)[0]["done"])  # type: ignore[arg-type]
    http_server.faults.clear()
    http_server.reset_counters()
    result = run_cli([url, str(dest)], FAST)
    assert result.returncode == 0, result.stderr
    assert (dest / "model.bin").read_bytes() == data
    assert f"resuming model.bin: {done_parts} of 12 parts already downloaded" in result.stderr
    assert http_server.bytes_sent <= len(data) - done_parts * MiB + 1
    assert [p.name for p in dest.iterdir() if p.name.endswith(".si-partial")] == []


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_parts_in_progress_resume_from_the_bytes_they_wrote(
    tmp_path: Path, http_server: HttpFileServer, sig: signal.Signals
) -> None:
    """A 16 MiB file in four 4 MiB parts, each stalled after 1 MiB (for SIGKILL, three of them:
    the fourth completes, and the parts' record is saved then, with how far the others had got).
    The rerun fetches only what no part had written: the record says how far each part got."""
    data = os.urandom(16 * MiB)
    url = http_server.add("/p/model.bin", data)
    stalled = 3 if sig == signal.SIGKILL else 4
    http_server.faults["/p/model.bin"] = Fault(stall_after=MiB, stall_seconds=60, stall_times=stalled)
    dest = tmp_path / "out"
    env = clean_env({**FAST, "STORAGE_INITIALIZER_PART_SIZE": "4M", "STORAGE_INITIALIZER_STALL_TIMEOUT": "120"})
    argv = [sys.executable, "-m", "storage_initializer", url, str(dest)]
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE)
    temp = dest / ".model.bin.si-partial"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if sig == signal.SIGKILL:
            records = _partial_records(dest)
            if records and records[0]["done"]:
                break
        elif temp.exists() and temp.stat().st_blocks * 512 >= 4 * MiB and http_server.bytes_sent >= 4 * MiB:
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("the parts never got going")
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=30)
    (record,) = _partial_records(dest)
    done = {int(i) for i in record["done"]}  # type: ignore[union-attr]
    progress = {int(i): int(o) for i, o in dict(record.get("progress") or {}).items()}  # type: ignore[call-overload]
    assert len(done) == 4 - stalled, (record, stderr)
    # A part's record never claims more than its server sent (the first MiB, then the stall).
    assert progress and all(i * 4 * MiB < offset <= i * 4 * MiB + MiB for i, offset in progress.items()), record
    if sig == signal.SIGTERM:  # saved as the run stopped, once every stalled part had its MiB
        assert progress == {i: i * 4 * MiB + MiB for i in range(4)}, record
    kept = sum(offset - i * 4 * MiB for i, offset in progress.items())
    http_server.faults.clear()
    http_server.reset_counters()
    result = run_cli([url, str(dest)], FAST | {"STORAGE_INITIALIZER_PART_SIZE": "4M"})
    assert result.returncode == 0, result.stderr
    assert (dest / "model.bin").read_bytes() == data
    assert f"and {kept} bytes of {len(progress)} more" in result.stderr, result.stderr
    missing = len(data) - len(done) * 4 * MiB - kept
    assert missing <= http_server.bytes_sent <= missing + 1  # + the size probe's byte


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_files_read_as_one_stream_resume_from_the_bytes_on_disk(
    tmp_path: Path, http_server: HttpFileServer, sig: signal.Signals
) -> None:
    # Four 8 MiB files (below the multipart threshold: one stream each) are in flight when the
    # run dies, 3 MiB of each on disk: the rerun fetches the rest of each, not the whole.
    files = {f"m{i}.bin": os.urandom(8 * MiB) for i in range(4)}
    args: list[str] = []
    dest = tmp_path / "out"
    for name, data in files.items():
        args += [http_server.add(f"/s/{name}", data), str(dest)]
        # Every request stalls after 3 MiB (not only the first: a retried one must not finish the file).
        http_server.faults[f"/s/{name}"] = Fault(stall_after=3 * MiB, stall_seconds=60, stall_times=100)
    one_stream = {"STORAGE_INITIALIZER_RETRY_BACKOFF": "0.05", "STORAGE_INITIALIZER_MULTIPART_THRESHOLD": "64M"}
    env = clean_env({**one_stream, "STORAGE_INITIALIZER_STALL_TIMEOUT": "120"})
    proc = subprocess.Popen([sys.executable, "-m", "storage_initializer", *args], env=env, stderr=subprocess.PIPE)
    temps = [dest / f".{name}.si-partial" for name in files]
    deadline = time.monotonic() + 60
    while not all(t.exists() and t.stat().st_size >= 3 * MiB for t in temps):
        if time.monotonic() > deadline:
            proc.kill()
            sizes = {t.name: t.stat().st_size if t.exists() else None for t in temps}
            pytest.fail(f"the downloads never got going: {sizes}, {os.listdir(dest)}")
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.communicate(timeout=30)
    assert not any((dest / name).exists() for name in files)  # nothing incomplete under a final name
    http_server.faults.clear()
    http_server.reset_counters()
    result = run_cli(args, one_stream)
    assert result.returncode == 0, result.stderr
    assert tree(dest) == files
    assert result.stderr.count("resuming m") == 4
    assert http_server.bytes_sent <= 4 * 5 * MiB + 4 * 1024  # the rest of each file (and the size probes)


def test_rerun_skips_complete_files(tmp_path: Path, http_server: HttpFileServer) -> None:
    url = http_server.add("/m/model.bin", os.urandom(3 * MiB))
    assert run_cli([url, str(tmp_path)], FAST).returncode == 0
    assert os.listdir(tmp_path) == ["model.bin"]  # the model and nothing else: no state, no temp file
    http_server.reset_counters()
    again = run_cli([url, str(tmp_path)], FAST)
    assert again.returncode == 0
    assert "0 files, 0 bytes" in again.stderr and "1 already complete" in again.stderr
    assert http_server.bytes_sent <= 1  # only the one-byte probe
    assert os.listdir(tmp_path) == ["model.bin"]


def test_dest_holds_only_the_model_after_success_and_resume_state_after_a_failure(
    tmp_path: Path, http_server: HttpFileServer
) -> None:
    big, small = os.urandom(12 * MiB), os.urandom(1000)
    urls = [http_server.add("/m/big.bin", big), http_server.add("/m/small.bin", small)]
    http_server.faults["/m/big.bin"] = Fault(status_codes=[503] * 100)
    dest = tmp_path / "models"
    failed = run_cli([urls[0], str(dest), urls[1], str(dest)], {**FAST, "STORAGE_INITIALIZER_RETRIES": "0"})
    assert failed.returncode == 1
    assert ".storage-initializer" in os.listdir(dest)  # kept to resume: small.bin is known complete
    http_server.faults.clear()
    http_server.reset_counters()
    ok = run_cli([urls[0], str(dest), urls[1], str(dest)], FAST)
    assert ok.returncode == 0, ok.stderr
    assert "1 already complete" in ok.stderr
    assert sorted(os.listdir(dest)) == ["big.bin", "small.bin"]
    assert tree(dest) == {"big.bin": big, "small.bin": small}


def test_without_extended_attributes_dest_is_still_clean_and_a_rerun_downloads_again(
    tmp_path: Path, http_server: HttpFileServer
) -> None:
    # ramfs keeps no user extended attributes: nothing records the download after success.
    mount = tmp_path / "ramfs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "ramfs", "ramfs", str(mount)], check=True)
    try:
        data = os.urandom(MiB)
        url = http_server.add("/m/model.bin", data)
        for _ in range(2):
            result = run_cli([url, str(mount / "models")], FAST)
            assert result.returncode == 0, result.stderr
            assert tree(mount / "models") == {"model.bin": data}
        assert "1 file, 1048576 bytes" in result.stderr  # downloaded again: correct, only slower
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_changed_or_damaged_local_copy_is_downloaded_again(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.bin").write_bytes(b"a" * 100)
    dest = tmp_path / "dest"
    assert run_cli([str(source), str(dest)]).returncode == 0
    (dest / "a.bin").unlink()
    (dest / "a.bin").write_bytes(b"tampered")
    assert run_cli([str(source), str(dest)]).returncode == 0
    assert (dest / "a.bin").read_bytes() == b"a" * 100


# -- local sources ----------------------------------------------------------------------
def test_local_copy_hard_links_on_the_same_filesystem(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "sub/w.bin").write_bytes(b"w" * 1000)
    result = run_cli(["--link", f"file://{source}", str(tmp_path / "dest")])
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "dest/sub/w.bin").stat().st_ino == (source / "sub/w.bin").stat().st_ino
    assert not (tmp_path / "dest/sub/w.bin").is_symlink()


def test_a_volume_filled_by_an_earlier_run_can_be_the_source(tmp_path: Path) -> None:
    # A PVC cache filled by this tool, then copied into the pod's emptyDir: its resume
    # state and a crash's temporary file are bookkeeping, not model content.
    cache = tmp_path / "cache"
    (cache / "sub").mkdir(parents=True)
    (cache / "sub/w.bin").write_bytes(b"w" * 1000)
    (cache / "config.json").write_bytes(b"{}")
    assert run_cli([str(tmp_path / "cache"), str(tmp_path / "first")]).returncode == 0
    (tmp_path / "first/sub/.half.bin.si-partial").write_bytes(b"left by a crash")
    result = run_cli([f"file://{tmp_path / 'first'}", str(tmp_path / "second")])
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path / "second") == {"config.json": b"{}", "sub/w.bin": b"w" * 1000}


def test_a_local_source_that_is_dest_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    """The same directory as SRC and DEST would put state and temporary files into the source."""
    models = tmp_path / "models"
    (models / "sub").mkdir(parents=True)
    (models / "sub/w.bin").write_bytes(b"w" * 1000)
    result = run_cli([str(models), str(models)])
    assert result.returncode == 2 and "SRC and DEST are the same directory" in result.stderr
    assert sorted(p.relative_to(models).as_posix() for p in models.rglob("*")) == ["sub", "sub/w.bin"]


def test_ten_thousand_small_files_in_flat_memory(tmp_path: Path) -> None:
    source = Path("/dev/shm") / f"si-many-{os.getpid()}"  # another filesystem: a real copy
    try:
        for i in range(100):
            directory = source / f"d{i:03d}"
            directory.mkdir(parents=True)
            for j in range(100):
                (directory / f"f{j:03d}.bin").write_bytes(b"%d-%d" % (i, j))
        result, peak_kib = run_cli_peak_rss(
            [str(source), str(tmp_path / "dest")], {"STORAGE_INITIALIZER_LOG_LEVEL": "WARNING"}
        )
        assert result.returncode == 0, result.stderr
        files = tree(tmp_path / "dest")
        assert len(files) == 10_000
        assert files["d042/f017.bin"] == b"42-17"
        assert peak_kib < 256 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"
    finally:
        subprocess.run(["rm", "-rf", str(source)], check=True)


def test_two_gib_file_keeps_memory_flat(tmp_path: Path) -> None:
    source = Path("/dev/shm") / f"si-big-{os.getpid()}.bin"
    block = os.urandom(MiB)
    try:
        with open(source, "wb") as handle:
            for i in range(2048):
                handle.write(block[i % 7 :] + block[: i % 7])
        result, peak_kib = run_cli_peak_rss([str(source), str(tmp_path / "dest")])
        assert result.returncode == 0, result.stderr
        assert peak_kib < 256 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"
        copy = tmp_path / "dest" / source.name
        assert copy.stat().st_size == 2048 * MiB
        with open(copy, "rb") as handle:
            for i in range(2048):
                assert handle.read(MiB) == block[i % 7 :] + block[: i % 7], f"block {i}"
    finally:
        source.unlink(missing_ok=True)


# -- verification, safety (through the Python API with an in-memory store) -------------
def _digest(algorithm: str, data: bytes) -> str:
    if algorithm == "crc32c":
        import google_crc32c

        return str(google_crc32c.Checksum(data).digest().hex())
    if algorithm == "crc32":
        return f"{zlib.crc32(data):08x}"
    if algorithm == "git-sha1":  # what `git hash-object` prints
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    return hashlib.new(algorithm, data).hexdigest()


@pytest.mark.parametrize("algorithm", ["md5", "sha256", "crc32c", "crc32", "git-sha1"])
def test_checksums_are_verified_for_whole_and_multipart_reads(tmp_path: Path, algorithm: str) -> None:
    small, big = os.urandom(1000), os.urandom(5 * MiB)
    MemoryProvider.objects.update({"b/m/small": small, "b/m/big": big})
    MemoryProvider.checksums["b/m/small"] = {algorithm: _digest(algorithm, small)}
    MemoryProvider.checksums["b/m/big"] = {algorithm: _digest(algorithm, big)}
    _fetch("mem://b/m", tmp_path / "ok", part_size=MiB, multipart_threshold=2 * MiB)
    assert tree(tmp_path / "ok") == {"small": small, "big": big}


@pytest.mark.parametrize("algorithm", ["md5", "sha256", "crc32c", "crc32", "git-sha1"])
@pytest.mark.parametrize("size", [1000, 5 * MiB])
def test_checksum_mismatch_fails_and_publishes_nothing(tmp_path: Path, size: int, algorithm: str) -> None:
    data = os.urandom(size)
    MemoryProvider.objects["b/bad"] = data
    MemoryProvider.checksums["b/bad"] = {algorithm: _digest(algorithm, data + b"x")}
    with pytest.raises(IntegrityError, match=f"{algorithm} is"):
        _fetch("mem://b/bad", tmp_path / "out", part_size=MiB, multipart_threshold=2 * MiB)
    assert os.listdir(tmp_path / "out") == []  # nothing worth resuming: nothing left
    assert [p for p in (tmp_path / "out").rglob("*.si-partial")] == []


@pytest.mark.parametrize(
    "key",
    ["../escape", "a/../../escape", "/abs/escape", "a\\..\\escape", "C:/escape", "a\x00b", "x/./y", "n" * 300],
)
def test_hostile_keys_never_write_outside_dest(tmp_path: Path, key: str) -> None:
    MemoryProvider.objects.update({"b/m/fine": b"ok", f"b/m/{key}": b"evil"})
    with pytest.raises(UnsafePathError):
        _fetch("mem://b/m", tmp_path / "dest")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest"]
    assert not any(p.read_bytes() == b"evil" for p in tmp_path.rglob("*") if p.is_file())


def test_file_and_directory_with_one_name_is_an_error(tmp_path: Path) -> None:
    MemoryProvider.objects.update({"b/m/a": b"file", "b/m/a/b": b"child"})
    with pytest.raises(UnsafePathError, match="needs 'a' to be a directory"):
        _fetch("mem://b/m", tmp_path / "dest")


def test_symlink_inside_dest_is_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "sub").symlink_to(outside)
    MemoryProvider.objects.update({"b/m/sub/file.bin": b"x", "b/m/top.bin": b"y"})
    with pytest.raises(UnsafePathError, match="symlink"):
        _fetch("mem://b/m", dest)
    assert list(outside.iterdir()) == []


def test_symlink_at_a_file_name_is_replaced_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_bytes(b"keep me")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "model.bin").symlink_to(target)
    MemoryProvider.objects["b/m/model.bin"] = b"new"
    _fetch("mem://b/m", dest)
    assert target.read_bytes() == b"keep me"
    assert not (dest / "model.bin").is_symlink() and (dest / "model.bin").read_bytes() == b"new"


def test_nothing_matched_is_an_error(tmp_path: Path) -> None:
    MemoryProvider.objects.update({"b/m/": b"", "b/m/sub/": b""})
    with pytest.raises(NotFoundError, match="only directory markers"):
        _fetch("mem://b/m", tmp_path / "dest")


def test_disk_full_is_clear_and_leaves_no_temp_files(tmp_path: Path, http_server: HttpFileServer) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        url = http_server.add("/huge.bin", os.urandom(8 * MiB))
        result = run_cli([url, str(mount)], FAST)
        assert result.returncode == 1
        assert "no space left on the device" in result.stderr
        leftovers = [p for p in mount.rglob("*") if p.is_file() and ".storage-initializer" not in p.parts]
        assert leftovers == []
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_directory_where_a_file_goes_is_refused_before_downloading(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    (dest / "model.bin" / "keep").mkdir(parents=True)
    MemoryProvider.objects["b/m/model.bin"] = b"weights"
    with pytest.raises(UnsafePathError, match="exists as a directory"):
        _fetch("mem://b/m", dest)
    assert MemoryProvider.reads == []  # refused at planning: nothing was read
    assert (dest / "model.bin" / "keep").is_dir()


def test_leftover_sweep_leaves_a_nested_dest_alone(tmp_path: Path) -> None:
    """After an interrupted run, the sweep removes that DEST's stale temporary files, but not
    those of another DEST nested inside it (a concurrent pair may be writing them now)."""
    MemoryProvider.objects.update({"b/m/a.bin": b"a" * 100})
    outer = tmp_path / "out"
    (outer / ".storage-initializer").mkdir(parents=True)
    (outer / ".storage-initializer" / "running").write_text("12345")  # a crashed earlier run
    (outer / "d").mkdir()
    (outer / "d" / ".stale.bin.si-partial").write_bytes(b"left by the crash")
    nested = outer / "sub"
    (nested / ".storage-initializer").mkdir(parents=True)
    (nested / "deep").mkdir()
    (nested / "deep" / ".w.bin.si-partial").write_bytes(b"another pair is writing this")
    _fetch("mem://b/m", outer)
    assert (outer / "a.bin").read_bytes() == b"a" * 100
    assert not (outer / "d" / ".stale.bin.si-partial").exists()
    assert (nested / "deep" / ".w.bin.si-partial").read_bytes() == b"another pair is writing this"


def test_damaged_resume_state_is_ignored_not_fatal(tmp_path: Path) -> None:
    from storage_initializer.engine.state import DestState

    MemoryProvider.objects.update({"b/m/small.bin": b"s" * 1000, "b/m/big.bin": os.urandom(5 * MiB)})
    dest = tmp_path / "dest"
    _fetch("mem://b/m", dest, part_size=MiB, multipart_threshold=2 * MiB)
    # A crashed run's state: a corrupted block in the manifest, a damaged partial record of a file
    # to fetch again.
    (dest / ".storage-initializer/partial").mkdir(parents=True)
    (dest / ".storage-initializer/running").write_text("12345")
    with open(dest / ".storage-initializer/manifest.jsonl", "ab") as manifest:
        manifest.write(b"\xff\xfe\x00garbage\n")
    (dest / "big.bin").unlink()
    Path(DestState(str(dest))._partial_path("big.bin")).write_text('["not", "a", "record"]')
    MemoryProvider.reads.clear()
    _fetch("mem://b/m", dest, part_size=MiB, multipart_threshold=2 * MiB)
    assert (dest / "big.bin").read_bytes() == MemoryProvider.objects["b/m/big.bin"]
    assert {full for full, _, _ in MemoryProvider.reads} == {"b/m/big.bin"}  # small.bin still known complete


def test_a_file_from_another_source_is_not_taken_as_complete(tmp_path: Path) -> None:
    """Versions are only comparable within one source: two stores may both call different bytes
    of the same size "v1" (ETags of two HTTP servers, generations of two buckets)."""
    first, second = b"A" * 1000, b"B" * 1000
    MemoryProvider.objects.update({"one/m/model.bin": first, "two/m/model.bin": second})
    dest = tmp_path / "out"
    _fetch("mem://one/m", dest)
    assert (dest / "model.bin").read_bytes() == first
    (result,) = download([("mem://two/m", str(dest))], settings=_settings(), registry=memory_registry())
    assert result.error is None and result.skipped == 0
    assert (dest / "model.bin").read_bytes() == second
    (again,) = download([("mem://two/m/", str(dest))], settings=_settings(), registry=memory_registry())
    assert again.error is None and again.skipped == 1  # same source: still resumes


def test_a_dest_inside_a_local_source_is_not_copied_into_itself(tmp_path: Path) -> None:
    """`/data -> /data/out`: the walk of /data meets the DEST being filled (its state says a
    run is in progress) and leaves it out, so nothing lands in out/out/."""
    files = {f"f{i:03}.bin": os.urandom(1000) for i in range(200)}
    files["sub/z.bin"] = b"z"
    for dest_name in ("out", "zz-out"):  # walked before and after the files
        source = tmp_path / f"data-{dest_name}"
        (source / "sub").mkdir(parents=True)
        for name, data in files.items():
            (source / name).write_bytes(data)
        result = run_cli([str(source), str(source / dest_name)])
        assert result.returncode == 0, result.stderr
        assert tree(source / dest_name) == files


# -- the read contract: providers are never asked for an empty range ----------------
def test_empty_objects_are_written_without_a_read(tmp_path: Path) -> None:
    MemoryProvider.objects.update({"e/empty.txt": b"", "e/data.bin": b"x" * 10})
    _fetch("mem://e", tmp_path / "out")  # the memory provider fails on an empty range
    assert (tmp_path / "out/empty.txt").read_bytes() == b""
    assert [read[0] for read in MemoryProvider.reads] == ["e/data.bin"]


def test_a_small_empty_object_is_fetched_without_a_read(tmp_path: Path) -> None:
    from storage_initializer.runner import Runner

    MemoryProvider.objects["sig/empty.sig"] = b""
    Runner(_settings(), memory_registry()).fetch_small("mem://sig/empty.sig", str(tmp_path / "empty.sig"))
    assert (tmp_path / "empty.sig").read_bytes() == b""
    assert MemoryProvider.reads == []
