"""The download benchmark of issue 6: this project against its peers, interleaved.

Run it with ``bench/run.sh [OPTIONS]`` (installs everything first); see
bench/README.md. For each source and dataset it runs every tool once per
round, rotating the order each round (A B C, B C A, ...) so machine drift
hits every tool alike, and reports medians and paired ratios. It never
asserts: failed or wrong runs are recorded and shown, and the raw results
(JSON lines) and a markdown table go to bench/results/.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import itertools
import json
import os
import platform
import random
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import datasets
import dest_fs
import measure
import report
import servers
import tools
import vm_memory
from datasets import Dataset

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / ".work"
SOURCES = ("s3", "http", "gcs", "azure")
EMULATORS = ("gcs", "azure")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.sh",
        description="Benchmark storage-initializer against its peers (interleaved runs, medians, ratios).",
    )
    parser.add_argument(
        "--datasets",
        default=",".join(datasets.DEFAULT),
        help="comma list of %(default)s (and tiny: one 4 KiB object, the fixed cost of a run)",
    )
    parser.add_argument("--sources", default="s3,http,gcs,azure", help="comma list of %(default)s")
    parser.add_argument(
        "--s3-objects",
        choices=("aws", "rclone"),
        default="aws",
        help="how S3 objects are seeded: aws = as AWS S3 holds them today (rclone's shapes plus the"
        " CRC64NVME checksum S3 gives every new object; bench/seed_s3.py), rclone = rclone copy"
        " (MD5 ETags only, as MinIO/Ceph hold objects uploaded without a checksum) (%(default)s)",
    )
    parser.add_argument("--tools", default="", help="comma list (default: every default tool of each source)")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:VAR=VALUE ...",
        help='an extra run of this project with environment, e.g. "ours-c32:STORAGE_INITIALIZER_CONCURRENCY=32"',
    )
    parser.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="GIT_REF",
        help="an extra run of this project as it was at GIT_REF (installed once into bench/.work/baseline-COMMIT)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="rounds per source and dataset (%(default)s)")
    parser.add_argument(
        "--order-seed",
        default=secrets.token_hex(4),
        help="seed of the rounds' tool orders (default: a new one each run, recorded with the results;"
        " give a run's seed to repeat its orders)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke sizes: 256 MiB / 32x8 MiB / 500x64 KiB / 4x64 MiB")
    parser.add_argument(
        "--emulator-full", action="store_true", help="full dataset sizes for gcs/azure too (default: quick sizes)"
    )
    parser.add_argument("--emulator-repeats", type=int, default=1, help="rounds for gcs/azure (%(default)s)")
    parser.add_argument("--warmup", action="store_true", help="one unrecorded run of each tool before the rounds")
    parser.add_argument("--hash-all", action="store_true", help="sha256-check every run's files, not only ours once")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run before it is killed")
    parser.add_argument("--label", default="", help="suffix of the result file names")
    parser.add_argument("--data-dir", type=Path, default=BENCH / "data", help="dataset cache (%(default)s)")
    parser.add_argument("--results-dir", type=Path, default=BENCH / "results")
    parser.add_argument("--keep", action="store_true", help="keep the run's work dir (server data, logs)")
    parser.add_argument("--list-tools", action="store_true", help="print the tools and exit")
    parser.add_argument(
        "--mode",
        choices=("pinned", "shared"),
        default="pinned",
        help="pinned (default): every tool on --client-cpus, the servers on --server-cpus, as a pod with cpu: 1 "
        "beside its store; shared: no pinning, tools and servers share every core",
    )
    parser.add_argument("--client-cpus", default="1", help="CPUs of the tool in pinned mode (%(default)s)")
    parser.add_argument("--server-cpus", default="0", help="CPUs of the servers in pinned mode (%(default)s)")
    parser.add_argument(
        "--dest",
        choices=("node-like", "disk"),
        default="node-like",
        help="node-like (default): when this machine's ext4 has no journal, runs write to a journaled ext4"
        " image, as a node's disk is (bench/dest_fs.py); disk: bench/.work/dest on this machine's disk",
    )
    parser.add_argument(
        "--leave-page-reporting",
        action="store_true",
        help="do not hold freed memory in a VM with free page reporting (bench/vm_memory.py): every tool"
        " may then write into pages the host must back again, which moves client CPU by up to 2.5x",
    )
    parser.add_argument(
        "--touch-memory",
        action="store_true",
        help="before each run, touch as much free memory as the run writes, so the host backs it"
        " (bench/vm_memory.py: measured, not shown to help; off by default)",
    )
    args = parser.parse_args(argv)
    if args.mode == "pinned":
        measure.CLIENT_CPUS = _cpus(args.client_cpus)
        servers.SERVER_CPUS = _cpus(args.server_cpus)
    return args


def _cpus(text: str) -> frozenset[int]:
    """``"1"``, ``"0,2"`` or ``"0-3"`` -> the CPU numbers."""
    cpus: set[int] = set()
    for item in text.split(","):
        low, _, high = item.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return frozenset(cpus)


# -- validation ------------------------------------------------------------------------


def scan(dest: Path) -> dict[str, int]:
    """relative path -> size of every regular file below ``dest`` (our resume state excluded)."""
    found: dict[str, int] = {}
    for directory, dirnames, filenames in os.walk(dest):
        if Path(directory) == dest and ".storage-initializer" in dirnames:
            dirnames.remove(".storage-initializer")
        for name in filenames:
            path = Path(directory) / name
            found[path.relative_to(dest).as_posix()] = path.lstat().st_size
    return found


def check(dest: Path, ds: Dataset, hashes: dict[str, str] | None) -> tuple[bool, str, bool | None]:
    """(count and bytes right, what is wrong, sha256 of every file right or None if not checked)."""
    found = scan(dest)
    count, size = len(found), sum(found.values())
    problems = []
    if count != ds.count or size != ds.total_bytes:
        problems.append(f"{count} files / {size} bytes, expected {ds.count} / {ds.total_bytes}")
    expected = {f.path: f.size for f in ds.files}
    if not problems and found != expected:
        problems.append("layout differs: " + ", ".join(sorted(set(found) ^ set(expected))[:3]))
    hash_ok = None
    if hashes is not None and not problems:
        hash_ok = True
        for rel, digest in hashes.items():
            h = hashlib.sha256()
            with open(dest / rel, "rb") as handle:
                while block := handle.read(8 << 20):
                    h.update(block)
            if h.hexdigest() != digest:
                hash_ok = False
                problems.append(f"sha256 of {rel} differs")
                break
    count_ok = count == ds.count and size == ds.total_bytes
    return count_ok, "; ".join(problems), hash_ok


# -- machine notes ------------------------------------------------------------------------


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else ""


def code_digest() -> str:
    """A digest of this project's Python sources, to tell whether they changed during a run."""
    digest = hashlib.sha256()
    for base in ("storage_initializer", "providers"):
        for path in sorted((ROOT / base).rglob("*.py")):
            digest.update(str(path.relative_to(ROOT)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def machine_notes(paths: tools.Paths, dest_root: Path) -> dict[str, Any]:
    cpu = ""
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    fs = _first_line(["findmnt", "-n", "-o", "FSTYPE,SOURCE", "-T", str(dest_root)])
    commit = _first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = bool(_first_line(["git", "-C", str(ROOT), "status", "--porcelain", "storage_initializer", "providers"]))
    versions = {
        "python": platform.python_version(),
        "storage-initializer": f"{commit}{' (+uncommitted changes)' if dirty else ''}",
        "kserve-storage": _first_line(
            [paths.kserve_python, "-c", "import importlib.metadata as m; print(m.version('kserve-storage'))"]
        ),
        "s5cmd": _first_line([paths.s5cmd, "version"]),
        "rclone": _first_line([paths.rclone, "version"]),
        "awscli": _first_line([paths.aws, "--version"]),
        "curl": _first_line([paths.curl, "--version"]),
        "aria2c": _first_line([paths.aria2c, "--version"]),
        "nginx": _first_line(["/usr/sbin/nginx", "-v"]),
        "weed": _first_line([servers._weed_binary(), "version"]),
    }
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "kernel": platform.release(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem / 2**30, 1),
        "dest_fs": fs,
        "dest": str(dest_root),
        "load_start": [round(x, 2) for x in os.getloadavg()],
        "code_digest": code_digest(),
        "versions": versions,
    }


# -- the run ------------------------------------------------------------------------------


def make_server(name: str, work: Path, paths: tools.Paths, data_root: Path, s3_objects: str = "aws") -> servers.Server:
    if name == "s3":
        return servers.SeaweedFS(work, paths.rclone, aws_checksums=s3_objects == "aws")
    if name == "http":
        return servers.Nginx(work, paths.rclone, data_root)
    if name == "gcs":
        return servers.FakeGcs(work, paths.rclone)
    if name == "azure":
        return servers.Azurite(work, paths.rclone, WORK / "azurite" / "node_modules" / ".bin" / "azurite-blob")
    raise ValueError(f"unknown source {name!r} (choose from {', '.join(SOURCES)})")


def select_tools(args: argparse.Namespace) -> list[tools.Tool]:
    chosen = [t for t in tools.TOOLS]
    wanted = [t.strip() for t in args.tools.split(",") if t.strip()]
    known = {t.name for t in chosen}
    for name in wanted:
        if name not in known:
            raise SystemExit(f"bench: unknown tool {name!r} (known: {', '.join(sorted(known))})")
    selected = [t for t in chosen if t.name in wanted] if wanted else [t for t in chosen if t.default]
    for spec in args.variant:
        try:
            selected.append(tools.variant(spec))
        except ValueError as exc:
            raise SystemExit(f"bench: {exc}") from None
    for ref in args.baseline:
        try:
            selected.append(tools.baseline(ref))
        except ValueError as exc:
            raise SystemExit(f"bench: {exc}") from None
    return selected


class Runner:
    def __init__(
        self, args: argparse.Namespace, paths: tools.Paths, work: Path, out_jsonl: Path, dest_root: Path
    ) -> None:
        self.args = args
        self.paths = paths
        self.work = work
        self.out = open(out_jsonl, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.home = work / "home"
        self.tmp = work / "tmp"
        self.logs = WORK / "logs" / work.name.removeprefix("run-")  # kept after the run
        for d in (self.home, self.tmp, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        self.dest_root = dest_root
        self.dest_root.mkdir(parents=True, exist_ok=True)
        self.counter = 0
        #: Touch the run's share of free memory before each run (a VM handing free memory back).
        self.back_memory = False

    def close(self) -> None:
        self.out.close()

    def write(self, record: dict[str, Any]) -> None:
        self.out.write(json.dumps(record, sort_keys=True) + "\n")
        self.out.flush()

    def base_env(self) -> dict[str, str]:
        """A scrubbed environment: no user config (~/.aws, rclone.conf) leaks into a run."""
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "TMPDIR": str(self.tmp),
        }

    def run_one(
        self,
        tool: tools.Tool,
        server: servers.Server,
        ds: Dataset,
        round_no: int,
        hashes: dict[str, str] | None,
        record: bool = True,
    ) -> dict[str, Any]:
        self.counter += 1
        dest = self.dest_root / f"run-{self.counter:05d}"
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir()
        argv, env = tool.command(self.paths, server, ds, dest)
        full_env = {**self.base_env(), **env}
        log_path = self.logs / f"{server.name}-{ds.key}-{tool.name}-r{round_no}.log"
        load = os.getloadavg()[0]
        mem_free, mem_available = datasets.memory_free()
        reported = datasets.memory_reported()
        if self.back_memory:
            # The host backs what this run will write into, as a node's memory is (see vm_memory).
            vm_memory.back_free_memory(ds.total_bytes + (256 << 20))
        counters = datasets.vmstat()
        server_cpu = server.cpu_seconds()
        result = measure.run(argv, full_env, log_path, timeout=self.args.timeout)
        server_cpu = server.cpu_seconds() - server_cpu
        reported_after = datasets.memory_reported()
        counters_after = datasets.vmstat()
        vmstat_moved = {k: v - counters[k] for k, v in counters_after.items() if k in counters and v != counters[k]}
        handed_back = None if reported is None or reported_after is None else (reported_after - reported) >> 20
        ok_count, problem, hash_ok = check(dest, ds, hashes)
        ok = result.exit_code == 0 and ok_count and hash_ok is not False
        if result.exit_code != 0:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
            problem = f"exit {result.exit_code}{' (timeout)' if result.timed_out else ''}: " + " | ".join(tail)
        shutil.rmtree(dest, ignore_errors=True)
        os.sync()  # the next run starts with no dirty pages of this one in flight
        entry = {
            "type": "run",
            "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "source": server.name,
            "dataset": ds.name,
            "dataset_key": ds.key,
            "files": ds.count,
            "bytes": ds.total_bytes,
            "tool": tool.name,
            "ours": tool.ours,
            "env": dict(tool.env),
            "round": round_no,
            "wall_s": round(result.wall, 4),
            "cpu_user_s": round(result.cpu_user, 3),
            "cpu_sys_s": round(result.cpu_sys, 3),
            "cpu_s": round(result.cpu, 3),
            "peak_rss_bytes": result.peak_rss,
            "exit_code": result.exit_code,
            "ok": ok,
            "problem": problem,
            "hash_checked": hash_ok is not None,
            "server_cpu_s": round(server_cpu, 3),
            "load1": round(load, 2),
            "mem_free_mib": mem_free >> 20,
            "mem_available_mib": mem_available >> 20,
            # Freed memory the guest handed back to its host during the run (see datasets).
            "mem_reported_mib": handed_back,
            "vmstat": vmstat_moved,  # deltas of datasets.VMSTAT_KEYS over the run (machine-wide)
            "argv": [a if len(a) < 200 else a[:60] + "..." for a in argv],
        }
        if record:
            self.write(entry)
        mbps = ds.total_bytes / result.wall / 1e6
        status = "ok" if ok else f"FAILED: {problem}"
        if hash_ok:
            status += " (sha256 checked)"
        tag = "warmup" if not record else f"r{round_no}"
        print(
            f"  [{server.name} {ds.name} {tag}] {tool.name:<14} {result.wall:7.2f} s {mbps:8.1f} MB/s"
            f"  cpu {result.cpu:6.2f} s  rss {result.peak_rss / 2**20:6.0f} MiB"
            f"  server cpu {server_cpu:5.2f} s  load {load:4.1f}  {status}",
            flush=True,
        )
        return entry


def round_orders(applicable: list[tools.Tool], rounds: int, seed: str, after: str = "") -> list[list[tools.Tool]]:
    """The order of each round: shuffles in which no tool follows the same tool twice.

    Tools run one after another, and one tool's after-effects (freed memory the VM hands back,
    a store left busy) land on the next. A rotation gave each tool the same predecessor in
    every round; a shuffle seeded by the round number alone gave the same orders in every bench
    run, and put ours without verification right after rclone tuned in rounds 1 and 3 of all of
    them (its slow shared-mode medium runs, 2026-12-07). Now each round is a shuffle in which
    no tool runs right after a tool it followed before (the previous round's last tool counts;
    5000 tries always find one for the bench's 7-9 tools and up to 5 rounds), and the orders
    change with ``seed``, a bench option recorded with the results.
    """
    rng = random.Random(seed)
    used: set[tuple[str, str]] = set()
    last = after  # the tool that ran just before the first round (the warm-up's last)
    orders: list[list[tools.Tool]] = []
    for _ in range(rounds):
        order = list(applicable)
        for _attempt in range(5000):
            rng.shuffle(order)
            pairs = set(itertools.pairwise([last, *(t.name for t in order)]))
            if not pairs & used and order[0].name != last:  # nor twice in a row across rounds
                break
        else:
            used.clear()  # more rounds than fresh pairs: start over
        used |= pairs
        last = order[-1].name
        orders.append(order)
    return orders


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    selected = select_tools(args)
    if args.list_tools:
        for t in [*tools.TOOLS, *selected[len([x for x in selected if not x.env]) :]]:
            flag = "" if t.default or t.env else "  (not run by default)"
            print(f"{t.name:<14} {','.join(t.sources):<20} {t.description}{flag}")
        return 0
    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    names = [d.strip() for d in args.datasets.split(",") if d.strip()]
    for s in sources:
        if s not in SOURCES:
            raise SystemExit(f"bench: unknown source {s!r} (choose from {', '.join(SOURCES)})")
    for n in names:
        if n not in datasets.NAMES:
            raise SystemExit(f"bench: unknown dataset {n!r} (choose from {', '.join(datasets.NAMES)})")
    if "azure" in sources and not (WORK / "azurite" / "node_modules" / ".bin" / "azurite-blob").exists():
        subprocess.run([str(BENCH / "setup.sh"), "azure"], check=True)

    paths = tools.Paths()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = stamp + (f"-{args.label}" if args.label else "") + ("-quick" if args.quick else "")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out_jsonl = args.results_dir / f"{name}.jsonl"
    out_md = args.results_dir / f"{name}.md"
    work = WORK / f"run-{stamp}"
    work.mkdir(parents=True, exist_ok=True)
    paths.config_dir = work
    args.data_dir.mkdir(parents=True, exist_ok=True)

    held = contextlib.ExitStack()
    dest_root = WORK / "dest"
    dest_note = None
    if args.dest == "node-like" and dest_fs.has_journal(WORK) is False:
        size = max(16, 4 * max(datasets.dataset(n, args.quick).total_bytes for n in names) >> 30)
        mounted = held.enter_context(dest_fs.journaled_ext4(WORK, size))
        if mounted is not None:
            dest_root = mounted / "dest"
            dest_note = f"a journaled ext4 image ({size} GiB, loop device with direct I/O): this disk has no journal"
        else:
            print("bench: warning: could not mount a journaled ext4 for the runs (root, losetup?)", flush=True)
    runner = Runner(args, paths, work, out_jsonl, dest_root)
    meta = machine_notes(paths, runner.dest_root)
    meta["dest_note"] = dest_note
    if not args.leave_page_reporting:
        meta["page_reporting_min_free_ms"] = held.enter_context(vm_memory.freed_pages_held())
        runner.back_memory = args.touch_memory and meta["page_reporting_min_free_ms"] is not None
    meta.update(
        type="meta",
        args={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        tools={t.name: t.description for t in selected},
    )
    print(f"bench: {meta['cores']} cores, load {meta['load_start']}, results -> {out_jsonl}", flush=True)

    try:
        runner.write(meta)
        for source in sources:
            emulator = source in EMULATORS
            quick = args.quick or (emulator and not args.emulator_full)
            repeats = args.emulator_repeats if emulator else args.repeats
            wanted = [datasets.dataset(n, quick) for n in names]
            server = make_server(source, work, paths, args.data_dir, args.s3_objects)
            applicable = [t for t in selected if source in t.sources]
            todo = [ds for ds in wanted if server.supports(ds)]
            if not applicable or not todo:
                continue
            for ds in todo:
                datasets.ensure(args.data_dir, ds)
            print(f"bench: starting {source}: {server.description}", flush=True)
            server.start()
            try:
                for ds in todo:
                    local = args.data_dir / ds.key
                    seconds = server.seed(ds, local)
                    if seconds:
                        dropped = datasets.evict(local)  # the store has it now (see datasets.evict)
                        print(
                            f"bench: seeded {source} with {ds.key} in {seconds:.1f} s"
                            f" (its local copy dropped from the page cache: {dropped / 1e9:.2f} GB)",
                            flush=True,
                        )
                    free, _ = datasets.memory_free()
                    if free < 2 * ds.total_bytes:
                        print(
                            f"bench: warning: {free / 2**30:.1f} GiB of memory free for runs that write"
                            f" {ds.total_bytes / 2**30:.1f} GiB each: the kernel will reclaim page cache"
                            " during them, which adds CPU and noise to every tool (free memory with"
                            " `sync; echo 3 > /proc/sys/vm/drop_caches` as root, or stop other servers)",
                            flush=True,
                        )
                    runner.write(
                        {"type": "seed", "source": source, "dataset_key": ds.key, "seconds": round(seconds, 2)}
                    )
                    manifest = datasets.load_manifest(args.data_dir, ds)
                    hashed: set[str] = set()
                    if args.warmup:
                        for tool in applicable:
                            runner.run_one(tool, server, ds, 0, None, record=False)
                    orders = round_orders(
                        applicable,
                        repeats,
                        f"{args.order_seed}:{source}:{ds.key}",
                        after=applicable[-1].name if args.warmup else "",
                    )
                    for round_no, order in enumerate(orders, 1):
                        for tool in order:
                            want_hash = args.hash_all or (tool.ours and tool.name not in hashed)
                            entry = runner.run_one(tool, server, ds, round_no, manifest if want_hash else None)
                            if entry["hash_checked"]:
                                hashed.add(tool.name)
            finally:
                server.stop()
    except KeyboardInterrupt:
        print("bench: interrupted; writing what was measured", flush=True)
    finally:
        shutil.rmtree(runner.dest_root, ignore_errors=True)
        held.close()
        runner.write({"type": "end", "load_end": [round(x, 2) for x in os.getloadavg()], "code_digest": code_digest()})
        runner.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    table = report.render(out_jsonl)
    out_md.write_text(table)
    print()
    print(table)
    print(f"bench: wrote {out_jsonl} and {out_md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
