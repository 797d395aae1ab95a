"""The node cache and the download-job role, through the real command.

Several initializers of one node share ``STORAGE_INITIALIZER_CACHE_DIR``:
the server's byte counter shows how often the model left the store.
"""

from __future__ import annotations

import fcntl
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from storage_initializer.runner import download
from storage_initializer.settings import settings_from_env
from tests.cli import clean_env, run_cli, tree
from tests.servers.fake_hf import FakeHFHub
from tests.servers.http_server import Fault, HttpFileServer

MiB = 1024 * 1024


def _model(server: HttpFileServer, prefix: str, sizes: Sequence[int]) -> tuple[list[str], dict[str, bytes]]:
    """Serve one file per size under ``prefix``; return their URLs and {name: bytes}."""
    urls, files = [], {}
    for index, size in enumerate(sizes):
        name = f"part-{index}.bin"
        data = os.urandom(size)
        urls.append(server.add(f"/{prefix}/{name}", data))
        files[name] = data
    return urls, files


def _args(urls: Sequence[str], dest: Path) -> list[str]:
    return [arg for url in urls for arg in (url, str(dest))]


def _start(args: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "storage_initializer", *args],
        env=clean_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _start_logged(args: Sequence[str], env: Mapping[str, str], log: Path) -> subprocess.Popen[str]:
    """Start an initializer whose stderr goes to ``log``, readable while it runs."""
    with log.open("w") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "storage_initializer", *args],
            env=clean_env(env),
            stdout=subprocess.DEVNULL,
            stderr=handle,
            text=True,
        )


#: What an initializer logs once it found an entry locked by another and waits for it.
WAITING = "waiting for another initializer on this node"


def _wait_until_waiting(proc: subprocess.Popen[str], log: Path) -> None:
    """Return once ``proc`` logged that it waits for the entry's holder (a fixed sleep let a slow
    start-up take the signal before the wait began, and proved nothing on a fast machine)."""
    deadline = time.monotonic() + 60
    while WAITING not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert WAITING in log.read_text(), log.read_text()
    assert proc.poll() is None, "a waiting initializer did not wait"


def _cache_stats(stderr: str) -> tuple[int, int]:
    found = re.search(r"node cache: (\d+) hits, (\d+) misses", stderr)
    assert found, stderr
    return int(found.group(1)), int(found.group(2))


def _entries(cache: Path) -> dict[bytes, Path]:
    """Content -> data file of every cache entry."""
    objects = cache / "v1" / "objects"
    return {p.read_bytes(): p for p in objects.rglob("*") if p.is_file() and p.suffix != ".json"}


def _lock_of(entry: Path) -> Path:
    return entry.parents[2] / "locks" / (entry.name + ".lock")


@contextmanager
def _held(entry: Path, kind: int) -> Iterator[None]:
    """Hold an entry's lock as another initializer would (checking and linking it: shared)."""
    fd = os.open(_lock_of(entry), os.O_RDWR)
    try:
        fcntl.flock(fd, kind)
        yield
    finally:
        os.close(fd)


def test_concurrent_initializers_fetch_the_model_once(tmp_path: Path, http_server: HttpFileServer) -> None:
    urls, files = _model(http_server, "m", [6 * MiB, 3 * MiB, 1000])
    # The first response of each file is slow: every process starts while the model is still downloading.
    for name in files:
        http_server.faults[f"/m/{name}"] = Fault(stall_after=256 * 1024, stall_seconds=0.5, stall_times=1)
    env = {"STORAGE_INITIALIZER_CACHE_DIR": str(tmp_path / "cache")}
    procs = [_start(_args(urls, tmp_path / f"pod{i}"), env) for i in range(4)]
    outputs = [p.communicate(timeout=120) for p in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    for i in range(4):
        assert tree(tmp_path / f"pod{i}") == files
    total = sum(len(d) for d in files.values())
    assert http_server.bytes_sent < total * 1.2, "the model left the store more than once"
    stats = [_cache_stats(err) for _, err in outputs]
    assert sum(m for _, m in stats) == len(files) and sum(h for h, _ in stats) == 3 * len(files)
    # One inode per file, shared by the cache and every pod; read-only.
    big = tmp_path / "pod0" / "part-0.bin"
    assert big.stat().st_nlink == 5 and big.stat().st_mode & 0o777 == 0o444
    assert (tmp_path / "pod3" / "part-0.bin").stat().st_ino == big.stat().st_ino


def test_a_killed_downloader_is_taken_over_by_a_waiting_one(tmp_path: Path, http_server: HttpFileServer) -> None:
    urls, files = _model(http_server, "k", [4 * MiB])
    http_server.faults["/k/part-0.bin"] = Fault(stall_after=1 * MiB, stall_seconds=60, stall_times=1)
    env = {"STORAGE_INITIALIZER_CACHE_DIR": str(tmp_path / "cache")}
    first = _start(_args(urls, tmp_path / "pod0"), env)
    deadline = time.monotonic() + 30
    while http_server.bytes_sent < 1 * MiB and time.monotonic() < deadline:
        time.sleep(0.05)
    assert http_server.bytes_sent >= 1 * MiB, "the first initializer never started downloading"
    logs = [tmp_path / f"pod{i}.log" for i in (1, 2)]
    waiting = [_start_logged(_args(urls, tmp_path / f"pod{i}"), env, log) for i, log in zip((1, 2), logs, strict=True)]
    for proc, log in zip(waiting, logs, strict=True):
        _wait_until_waiting(proc, log)  # both find the entry locked and wait
    started = time.monotonic()
    first.send_signal(signal.SIGKILL)
    first.wait()
    for proc in waiting:
        proc.wait(timeout=60)
    assert time.monotonic() - started < 30, "the waiters waited for the killed holder's stalled download"
    outputs = [log.read_text() for log in logs]
    for proc, err in zip(waiting, outputs, strict=True):
        assert proc.returncode == 0, err
    assert tree(tmp_path / "pod1") == tree(tmp_path / "pod2") == files
    assert sorted(_cache_stats(err) for err in outputs) == [(0, 1), (1, 0)]
    assert http_server.bytes_sent < 2 * 4 * MiB + 64 * 1024  # the killed part plus one whole copy


def test_copy_mode_gives_each_dest_a_private_writable_file(tmp_path: Path, http_server: HttpFileServer) -> None:
    urls, files = _model(http_server, "cp", [1 * MiB])
    env = {"STORAGE_INITIALIZER_CACHE_DIR": str(tmp_path / "cache"), "STORAGE_INITIALIZER_CACHE_LINK": "copy"}
    for pod in ("pod0", "pod1"):
        done = run_cli(_args(urls, tmp_path / pod), env)
        assert done.returncode == 0, done.stderr
    assert _cache_stats(done.stderr) == (1, 0)
    private = tmp_path / "pod1" / "part-0.bin"
    assert private.stat().st_nlink == 1 and private.stat().st_mode & 0o200
    private.write_bytes(b"the model server rewrote me")  # harmless: nothing else shares it
    assert set(_entries(tmp_path / "cache")) == set(files.values())
    assert tree(tmp_path / "pod0") == files


def test_a_waiting_initializer_stops_on_sigterm(tmp_path: Path, http_server: HttpFileServer) -> None:
    urls, _ = _model(http_server, "t", [2 * MiB])
    http_server.faults["/t/part-0.bin"] = Fault(stall_after=512 * 1024, stall_seconds=30, stall_times=1)
    env = {"STORAGE_INITIALIZER_CACHE_DIR": str(tmp_path / "cache")}
    holder = _start(_args(urls, tmp_path / "pod0"), env)
    try:
        deadline = time.monotonic() + 30
        while http_server.bytes_sent < 512 * 1024 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert http_server.bytes_sent >= 512 * 1024, "the first initializer never started downloading"
        log = tmp_path / "pod1.log"
        waiter = _start_logged(_args(urls, tmp_path / "pod1"), env, log)
        _wait_until_waiting(waiter, log)
        started = time.monotonic()
        waiter.send_signal(signal.SIGTERM)
        waiter.wait(timeout=20)
        assert waiter.returncode == 143, log.read_text()
        assert time.monotonic() - started < 5
    finally:
        holder.kill()
        holder.wait()


def test_eviction_keeps_an_entry_in_use(tmp_path: Path, http_server: HttpFileServer) -> None:
    cache = tmp_path / "cache"
    env = {"STORAGE_INITIALIZER_CACHE_DIR": str(cache), "STORAGE_INITIALIZER_CACHE_MAX_SIZE": str(7 * MiB)}
    models = [_model(http_server, f"e{i}", [3 * MiB]) for i in range(4)]
    for i in (0, 1):
        assert run_cli(_args(models[i][0], tmp_path / f"pod{i}"), env).returncode == 0
        time.sleep(0.05)  # distinct last-use times
    oldest = _entries(cache)[models[0][1]["part-0.bin"]]
    with open(tmp_path / "pod0" / "part-0.bin", "rb") as reader:  # a model server reading its DEST
        with _held(oldest, fcntl.LOCK_SH):  # another initializer is linking the oldest entry
            done = run_cli(_args(models[2][0], tmp_path / "pod2"), env)
        assert done.returncode == 0, done.stderr
        cached = _entries(cache)
        assert models[0][1]["part-0.bin"] in cached, "an entry in use was evicted"
        assert models[1][1]["part-0.bin"] not in cached, "the least recently used free entry stays"
        assert models[2][1]["part-0.bin"] in cached
        assert reader.read() == models[0][1]["part-0.bin"]
    # Free again, the oldest entry goes next; the pods keep their files.
    assert run_cli(_args(models[3][0], tmp_path / "pod3"), env).returncode == 0
    cached = _entries(cache)
    assert models[0][1]["part-0.bin"] not in cached and len(cached) == 2
    assert tree(tmp_path / "pod0") == models[0][1]


def test_a_modified_entry_is_detected_and_downloaded_again(tmp_path: Path, http_server: HttpFileServer) -> None:
    urls, files = _model(http_server, "c", [2 * MiB, 1 * MiB])
    env = {"STORAGE_INITIALIZER_CACHE_DIR": str(tmp_path / "cache")}
    assert run_cli(_args(urls, tmp_path / "pod0"), env).returncode == 0
    entries = _entries(tmp_path / "cache")
    damaged, truncated = entries[files["part-0.bin"]], entries[files["part-1.bin"]]
    damaged.chmod(0o644)
    with open(damaged, "r+b") as handle:  # same size, other bytes (what root writing through a link does)
        handle.write(b"\0" * 4096)
    truncated.chmod(0o644)
    os.truncate(truncated, 1000)
    http_server.reset_counters()
    done = run_cli(_args(urls, tmp_path / "pod1"), env)
    assert done.returncode == 0, done.stderr
    assert tree(tmp_path / "pod1") == files
    assert _cache_stats(done.stderr) == (0, 2)
    assert "was modified or is incomplete" in done.stderr
    assert http_server.bytes_sent >= 3 * MiB
    assert set(_entries(tmp_path / "cache")) == set(files.values())  # repaired


def test_same_bytes_from_two_repos_are_stored_once_and_checked_by_sha256(
    tmp_path: Path, fake_hf_hub: FakeHFHub
) -> None:
    """Content-addressed: a fine-tune sharing its base's weights (same LFS sha256) gets them from the cache."""
    weights = os.urandom(2 * MiB)
    fake_hf_hub.add_repo("acme/base", {"model.safetensors": weights, "config.json": b'{"base": 1}'})
    fake_hf_hub.add_repo("acme/tuned", {"model.safetensors": weights, "config.json": b'{"tuned": 1}'})
    env = {
        "HF_ENDPOINT": fake_hf_hub.url,
        "HF_HOME": str(tmp_path / "hf"),
        "STORAGE_INITIALIZER_CACHE_DIR": str(tmp_path / "cache"),
    }
    assert run_cli(["hf://acme/base", str(tmp_path / "pod0")], env).returncode == 0
    done = run_cli(["hf://acme/tuned", str(tmp_path / "pod1")], env)
    assert done.returncode == 0, done.stderr
    assert tree(tmp_path / "pod1") == {"model.safetensors": weights, "config.json": b'{"tuned": 1}'}
    assert fake_hf_hub.bytes_served("model.safetensors", "acme/tuned") == 0
    assert _cache_stats(done.stderr) == (1, 1)  # the weights hit; the other config missed
    entry = _entries(tmp_path / "cache")[weights]
    assert entry.name.startswith("sha256-")
    # Damage that keeps size and mtime (a careless writer restoring the time) is caught only by hashing.
    stat = entry.stat()
    entry.chmod(0o644)
    with open(entry, "r+b") as handle:
        handle.write(b"\0" * 16)
    os.utime(entry, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    verify = {**env, "STORAGE_INITIALIZER_CACHE_VERIFY": "true"}
    again = run_cli(["hf://acme/tuned", str(tmp_path / "pod2")], verify)
    assert again.returncode == 0, again.stderr
    assert "does not match its sha256" in again.stderr
    assert (tmp_path / "pod2" / "model.safetensors").read_bytes() == weights
    assert fake_hf_hub.bytes_served("model.safetensors", "acme/tuned") == len(weights)


def _complete_or_absent(dest: Path, files: Mapping[str, bytes]) -> bool:
    """True when complete; False when absent; fails on anything else."""
    if not dest.exists():
        return False
    assert tree(dest) == files, "a partial model was published"
    return True


def test_download_job_publishes_all_or_nothing(tmp_path: Path, http_server: HttpFileServer) -> None:
    urls, files = _model(http_server, "j", [2 * MiB, 2 * MiB, 100])
    for name in files:  # every response pauses once: each run takes about a second
        http_server.faults[f"/j/{name}"] = Fault(stall_after=512 * 1024, stall_seconds=0.3, stall_times=10_000)
    dest = tmp_path / "node" / "models" / "llama"
    env = {"STORAGE_INITIALIZER_PUBLISH": "atomic-dir", "STORAGE_INITIALIZER_RETRY_BACKOFF": "0.05"}
    rng = random.Random(7)
    stage = dest.parent / ".llama.si-publish"

    def run_until_staged() -> tuple[subprocess.Popen[str], float]:
        """Start a run; return it once its stage appears (or it ended), with that moment."""
        proc = _start(_args(urls, dest), env)
        deadline = time.monotonic() + 30
        while not stage.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        return proc, time.monotonic()

    # Kill points are drawn within the time a whole run takes on this machine, measured first:
    # a fixed window would let a fast machine finish most runs before the kill (too few kills)
    # and a slow one be killed before any byte arrived.
    proc, staged_at = run_until_staged()
    assert proc.wait(timeout=60) == 0, proc.communicate()[1]
    span = time.monotonic() - staged_at
    assert _complete_or_absent(dest, files)
    shutil.rmtree(dest)
    killed = staged = runs = 0
    while (killed < 4 or staged < 2) and runs < 24:
        runs += 1
        proc, staged_at = run_until_staged()
        time.sleep(max(0.0, staged_at + rng.uniform(0.0, 0.8 * span) - time.monotonic()))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed += proc.returncode == -signal.SIGKILL
        staged += stage.exists() and not dest.exists()
        if _complete_or_absent(dest, files):
            shutil.rmtree(dest)  # published: start over to kill another download
    assert killed >= 4 and staged >= 2, (killed, staged)
    # A rerun resumes from the hidden stage and publishes the folder.
    done = run_cli(_args(urls, dest), env)
    assert done.returncode == 0, done.stderr
    assert _complete_or_absent(dest, files)
    assert sorted(os.listdir(dest.parent)) == ["llama"], "the stage was left behind"
    assert f"-> {dest} " in done.stderr


def test_download_job_into_a_mount_point_stages_inside(
    tmp_path: Path, http_server: HttpFileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KServe mounts the node volume's ``models/<name>`` at the job's DEST: the folder cannot be renamed."""
    urls, files = _model(http_server, "mp", [1000, 2000])
    dest = tmp_path / "mnt" / "models"
    dest.mkdir(parents=True)
    real_ismount = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda path: str(path) == str(dest) or real_ismount(path))
    settings = settings_from_env({"STORAGE_INITIALIZER_PUBLISH": "atomic-dir", "STORAGE_INITIALIZER_HEARTBEAT": "60"})
    results = download([(url, str(dest)) for url in urls], settings)
    assert [r.error for r in results] == [None, None]
    assert tree(dest) == files and sorted(os.listdir(tmp_path / "mnt")) == ["models"]


def test_unknown_cache_and_publish_settings_are_usage_errors(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    bad = (
        ("PUBLISH", "atomic"),
        ("CACHE_LINK", "symlink"),
        ("CACHE_MAX_SIZE", "lots"),
        ("CACHE_DIR", str(tmp_path / "file")),
    )
    for name, value in bad:
        done = run_cli(["https://127.0.0.1:9/m.bin", str(tmp_path / "d")], {f"STORAGE_INITIALIZER_{name}": value})
        assert done.returncode == 2 and f"STORAGE_INITIALIZER_{name}" in done.stderr, done.stderr
