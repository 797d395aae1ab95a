"""Profile one download of this project with py-spy: where does the CPU go?

    bench/profile.sh SOURCE DATASET [--quick] [--native] [--rate HZ] [--env VAR=VALUE ...]

Starts the source's server, seeds the dataset (as bench.py does), runs
``storage-initializer URI DEST`` under ``py-spy record`` (every thread is
sampled: the engine works in worker threads, which cProfile would not see)
and writes to bench/results/profiles/:

* ``<name>.collapsed.txt``: the raw samples, one stack per line (open it in
  https://www.speedscope.app or feed it to flamegraph.pl);
* ``<name>.top.txt``: the top functions by own time and by inclusive time,
  as a share of the samples, plus the run's wall and CPU.

Read the shares with care: py-spy counts a thread blocked in a system call
(``recv`` waiting for the server, a lock, the work queue) as active, so the
default mode shows where the threads *are*, not where CPU goes. ``--gil``
samples only the thread holding the GIL, i.e. where the Python side spends
its one core; ``--native`` adds C frames (hashing, copies, syscalls).
py-spy itself costs CPU (ptrace stops every thread per sample): compare
wall and CPU with bench.py's numbers, not these.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import datasets
import measure
from tools import TOOLS, Paths, variant

from bench import BENCH, SOURCES, WORK, make_server

_FRAME_LINE = " ("  # py-spy frames look like "function (path/file.py:123)"


def _short(frame: str) -> str:
    """``readinto (/x/y/socket.py:704)`` -> ``readinto (socket.py)``; line numbers dropped to group."""
    name, sep, where = frame.partition(_FRAME_LINE)
    if not sep:
        return frame
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if len(parts) >= 2 else path
    return f"{name} ({short})"


def summarize(collapsed: Path, top: int) -> str:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return "no samples\n"
    lines = [f"{total} samples", "", f"Top {top} by own time:"]
    lines += [f"  {n * 100 / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    lines += ["", f"Top {top} by inclusive time:"]
    lines += [f"  {n * 100 / total:5.1f}%  {f}" for f, n in inclusive.most_common(top)]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", choices=SOURCES)
    parser.add_argument("dataset", choices=datasets.NAMES)
    parser.add_argument("--quick", action="store_true", help="smoke sizes")
    parser.add_argument("--native", action="store_true", help="also sample C frames (hashing, ssl, syscalls)")
    parser.add_argument(
        "--gil",
        action="store_true",
        help="sample only the thread holding the GIL: where Python's (single-core) CPU goes",
    )
    parser.add_argument("--rate", type=int, default=100, help="samples per second (%(default)s)")
    parser.add_argument("--env", action="append", default=[], metavar="VAR=VALUE", help="extra environment")
    parser.add_argument(
        "--perf",
        action="store_true",
        help="use Linux perf instead (kernel + user, C and Go too): shows system-call and copy costs",
    )
    parser.add_argument("--tool", default="ours", help="with --perf: profile this tool instead (e.g. s5cmd)")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()

    paths = Paths()
    pyspy = str(WORK / "peers" / "bin" / "py-spy")
    ds = datasets.dataset(args.dataset, args.quick)
    data_root = BENCH / "data"
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    work = WORK / f"profile-{stamp}"
    work.mkdir(parents=True)
    paths.config_dir = work
    out_dir = BENCH / "results" / "profiles"
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"{stamp}-{args.source}-{ds.key}" + ("-native" if args.native else "") + ("-gil" if args.gil else "")
    if args.perf:
        name = f"{stamp}-{args.source}-{ds.key}-perf-{args.tool}"
    collapsed, summary = out_dir / f"{name}.collapsed.txt", out_dir / f"{name}.top.txt"

    tool = variant("ours:" + " ".join(args.env)) if args.env else None
    if args.perf and args.tool != "ours":
        matches = [t for t in TOOLS if t.name == args.tool]
        if not matches:
            raise SystemExit(f"profile: unknown tool {args.tool!r}")
        tool = matches[0]
    server = make_server(args.source, work, paths, data_root)
    if not server.supports(ds):
        raise SystemExit(f"profile: {args.source} does not serve {ds.key}")
    datasets.ensure(data_root, ds)
    dest = work / "dest"
    try:
        server.start()
        server.seed(ds, data_root / ds.key)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "LANG": "C.UTF-8"}
        if args.perf:
            dest.mkdir(parents=True, exist_ok=True)
            command, extra = (tool or TOOLS[0]).command(paths, server, ds, dest)
            env.update(extra)
            data = work / "perf.data"
            argv = ["perf", "record", "-F", str(args.rate), "-o", str(data), "--", *command]
            result = measure.run(argv, env, work / "run.log", timeout=1800)
            sections = []
            for sort, limit in (("dso", "0.5"), ("dso,sym", "0.7")):
                report = subprocess.run(
                    ["perf", "report", "-i", str(data), "--stdio", "--sort", sort, "--percent-limit", limit],
                    capture_output=True,
                    text=True,
                    check=False,
                ).stdout
                lines = [line for line in report.splitlines() if line.strip() and not line.startswith("#")]
                sections.append(f"By {sort} (share of samples):\n" + "\n".join(lines[: args.top]))
            text = (
                f"{' '.join(command[:2])} ... under perf record -F {args.rate} (all threads, kernel + user)\n"
                f"exit {result.exit_code}; wall {result.wall:.2f} s, CPU {result.cpu:.2f} s "
                f"(user {result.cpu_user:.2f}, sys {result.cpu_sys:.2f})\n\n" + "\n\n".join(sections) + "\n"
            )
            summary.write_text(text)
            print(text)
            print(f"profile: wrote {summary}")
            return 0 if result.exit_code == 0 else 1
        env.update({**server.env(), **dict(tool.env if tool else ())})
        record = [pyspy, "record", "--rate", str(args.rate), "--format", "raw", "--output", str(collapsed)]
        if args.native:
            record.append("--native")
        if args.gil:
            record.append("--gil")
        argv = [*record, "--", paths.ours, server.uri(ds), str(dest)]
        result = measure.run(argv, env, work / "run.log", timeout=1800)
        log_tail = (work / "run.log").read_text(errors="replace").strip().splitlines()[-4:]
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    header = (
        f"storage-initializer {server.uri(ds)} DEST under py-spy ({args.rate} Hz{', native' if args.native else ''}"
        f"{', GIL holder only' if args.gil else ''});"
        f" env {' '.join(args.env) or '(defaults)'}\n"
        f"exit {result.exit_code}; wall {result.wall:.2f} s (includes py-spy's overhead), CPU {result.cpu:.2f} s "
        f"(user {result.cpu_user:.2f}, sys {result.cpu_sys:.2f}, py-spy's own included), "
        f"{ds.total_bytes / 1e9:.2f} GB in {ds.count} files\n" + "\n".join(log_tail) + "\n\n"
    )
    text = header + (summarize(collapsed, args.top) if collapsed.exists() else "py-spy wrote no samples\n")
    summary.write_text(text)
    print(text)
    print(f"profile: wrote {collapsed} and {summary}")
    return 0 if result.exit_code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
