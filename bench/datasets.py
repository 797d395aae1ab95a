"""The benchmark's datasets: random bytes, generated once and cached in bench/data/.

Each dataset lives in ``bench/data/<key>/`` where the key spells its parameters
(``large-1x2048MiB``), so a change of sizes never reuses stale files. The
manifest ``bench/data/<key>.manifest.json`` (relative path, size, sha256 of
each file) is written last: its presence means the dataset is complete.
Contents come from ``os.urandom`` (incompressible, no two files alike).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

_CHUNK = 8 * MiB

#: Configs and tokenizer files of a model-shaped set (sizes of a typical 7-8B model repo).
_MODEL_EXTRAS = (
    ("config.json", 1 * KiB),
    ("generation_config.json", 200),
    ("model.safetensors.index.json", 24 * KiB),
    ("special_tokens_map.json", 500),
    ("tokenizer.json", 9 * MiB),
    ("tokenizer_config.json", 50 * KiB),
)


@dataclass(frozen=True)
class FileSpec:
    path: str  # relative, "/"-separated
    size: int


@dataclass(frozen=True)
class Dataset:
    name: str  # large / medium / small / model
    key: str  # directory name and object prefix, e.g. "large-1x2048MiB"
    files: tuple[FileSpec, ...]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def count(self) -> int:
        return len(self.files)

    @property
    def single_file(self) -> bool:
        return len(self.files) == 1


def _size_label(size: int) -> str:
    if size % GiB == 0:
        return f"{size // GiB}GiB"
    if size % MiB == 0:
        return f"{size // MiB}MiB"
    return f"{size // KiB}KiB"


def _uniform(name: str, count: int, size: int, per_dir: int = 0) -> Dataset:
    key = f"{name}-{count}x{_size_label(size)}"
    if count == 1:
        return Dataset(name, key, (FileSpec("model.bin", size),))
    files = []
    for i in range(count):
        path = f"d{i // per_dir:02d}/f{i:04d}.bin" if per_dir else f"shard-{i:03d}.bin"
        files.append(FileSpec(path, size))
    return Dataset(name, key, tuple(files))


def _model(shards: int, shard_size: int) -> Dataset:
    files = [FileSpec(f"model-{i + 1:05d}-of-{shards:05d}.safetensors", shard_size) for i in range(shards)]
    files += [FileSpec(path, size) for path, size in _MODEL_EXTRAS]
    return Dataset("model", f"model-{shards}x{_size_label(shard_size)}", tuple(files))


NAMES = ("large", "medium", "small", "model", "tiny")
DEFAULT = NAMES[:4]


def dataset(name: str, quick: bool) -> Dataset:
    """The dataset ``name`` at full size (the issue's) or at smoke-test size (``quick``)."""
    if name == "large":
        return _uniform("large", 1, 256 * MiB if quick else 2 * GiB)
    if name == "medium":
        return _uniform("medium", 32 if quick else 256, 8 * MiB)
    if name == "small":
        return _uniform("small", 500 if quick else 4000, 64 * KiB, per_dir=100)
    if name == "model":
        return _model(4, 64 * MiB if quick else 1 * GiB)
    if name == "tiny":  # one 4 KiB object: the fixed cost of a run (start-up, credentials, listing)
        return _uniform("tiny", 1, 4 * KiB)
    raise ValueError(f"unknown dataset {name!r} (choose from {', '.join(NAMES)})")


def manifest_path(data_root: Path, ds: Dataset) -> Path:
    return data_root / f"{ds.key}.manifest.json"


def load_manifest(data_root: Path, ds: Dataset) -> dict[str, str]:
    """relative path -> sha256 of the cached dataset."""
    raw = json.loads(manifest_path(data_root, ds).read_text())
    return {entry["path"]: entry["sha256"] for entry in raw["files"]}


def ensure(data_root: Path, ds: Dataset, log: bool = True) -> Path:
    """Generate ``ds`` under ``data_root`` unless its manifest says it is already there."""
    root = data_root / ds.key
    manifest = manifest_path(data_root, ds)
    if manifest.exists():
        return root
    if log:
        print(f"bench: generating dataset {ds.key} ({ds.total_bytes / 1e9:.2f} GB, {ds.count} files)", flush=True)
    shutil.rmtree(root, ignore_errors=True)
    entries = []
    for spec in ds.files:
        path = root / spec.path
        path.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with open(path, "wb") as handle:
            left = spec.size
            while left:
                block = os.urandom(min(_CHUNK, left))
                handle.write(block)
                digest.update(block)
                left -= len(block)
        entries.append({"path": spec.path, "size": spec.size, "sha256": digest.hexdigest()})
    os.chmod(root, 0o755)
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": ds.key, "files": entries}, indent=0))
    tmp.replace(manifest)
    return root


def evict(root: Path) -> int:
    """Drop the page-cache pages of every file under ``root`` (``POSIX_FADV_DONTNEED``); return their bytes.

    Once a dataset is in a store, its local copy is only read again to check hashes. Left cached,
    the copies of every dataset (9 GB at full size) plus the stores' own volumes fill this
    machine's memory, and every run must then reclaim page cache for the bytes it writes, in its
    own process (direct reclaim) or in kswapd: measured here, that moved a tool's client CPU on the
    2 GiB object between 0.83 and 2.3 s from run to run, against 0.82-0.86 s with memory to spare.
    """
    dropped = 0
    for path in root.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                dropped += os.fstat(fd).st_size
            finally:
                os.close(fd)
    return dropped


def memory_free() -> tuple[int, int]:
    """``MemFree`` and ``MemAvailable`` of ``/proc/meminfo``, in bytes."""
    fields: dict[str, int] = {}
    with open("/proc/meminfo") as handle:
        for line in handle:
            name, _, rest = line.partition(":")
            fields[name] = int(rest.split()[0]) * 1024
    return fields.get("MemFree", 0), fields.get("MemAvailable", 0)


#: Memory-management counters a run may move for reasons outside the tool: reclaim, compaction,
#: page-cache refaults. Recorded per run (their deltas) to explain a run that cost more CPU.
VMSTAT_KEYS = (
    "allocstall_normal",
    "pgscan_direct",
    "pgsteal_direct",
    "pgscan_kswapd",
    "compact_stall",
    "compact_migrate_scanned",
    "compact_isolated",
    "workingset_refault_file",
    "pgmajfault",
)


def vmstat() -> dict[str, int]:
    """The :data:`VMSTAT_KEYS` counters of ``/proc/vmstat`` (empty where there is none)."""
    counters: dict[str, int] = {}
    try:
        with open("/proc/vmstat") as handle:
            for line in handle:
                name, _, value = line.partition(" ")
                if name in VMSTAT_KEYS:
                    counters[name] = int(value)
    except (OSError, ValueError):
        return {}
    return counters


#: Free page reporting (virtio-balloon) of this kind of VM: how much freed memory the guest has
#: handed back to its host, which then backs those pages again only when they are touched.
_REPORTED = "/sys/module/page_reporting/parameters/reported_kib"


def memory_reported() -> int | None:
    """Bytes of free memory reported to the host so far (``None``: no free page reporting here)."""
    try:
        with open(_REPORTED) as handle:
            return int(handle.read().strip()) * 1024
    except (OSError, ValueError):
        return None
