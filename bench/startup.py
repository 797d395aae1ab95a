"""Start-up cost of the command: ``--help`` wall time and what each entry point imports.

    .venv/bin/python bench/startup.py [--runs 20] [--json]

* wall time of ``storage-initializer --help`` (median, min and max of N runs;
  the target is under 0.3 s);
* for ``--help`` and ``--list-providers``: every third-party module imported
  (from ``python -X importtime``; a provider SDK there is a target miss), and
  the slowest imports (cumulative microseconds);
* the same for a download's start (``--list-providers`` loads every provider
  class) so the lead sees what a URI pulls in;
* ``--floor``: the CPU (user + system, on one CPU) of the interpreter alone and
  of the interpreter importing only the standard-library modules a one-file S3
  download cannot do without (:data:`FLOOR_MODULES`): what any Python
  downloader pays before its first byte, to set beside a Go binary's whole run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
SCRIPT = VENV_BIN / "storage-initializer"
PYTHON = VENV_BIN / "python"
#: Modules that are a provider SDK or a heavy HTTP stack: none may load for --help / --list-providers.
SDK_PREFIXES = (
    "boto3",
    "botocore",
    "s3transfer",
    "google",
    "grpc",
    "azure",
    "huggingface_hub",
    "hf_xet",
    "hdfs",
    "requests",
    "urllib3",
    "aiohttp",
    "httpx",
    "fsspec",
)
#: What a one-file S3 download needs from the standard library, whoever writes it:
#: sockets and TLS, an HTTP client, XML for the listing, hashes, JSON, logs, threads, typing.
FLOOR_MODULES = (
    "socket, ssl, http.client, xml.etree.ElementTree, urllib.parse, hashlib, json, logging, "
    "threading, dataclasses, typing"
)
_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def wall_times(argv: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.monotonic()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append(time.monotonic() - start)
    return times


_PROBE = """
import contextlib, io, json, sys
sys.argv = ["storage-initializer", *sys.argv[2:]]
import os
out = os.environ["BENCH_MODULES_OUT"]
try:
    with contextlib.redirect_stdout(io.StringIO()):
        from storage_initializer.cli import main
        main()
except SystemExit:
    pass
loaded = {name: getattr(mod, "__file__", None) is not None for name, mod in list(sys.modules.items())}
with open(out, "w") as handle:
    json.dump(loaded, handle)
"""


def loaded_modules(args: list[str]) -> dict[str, bool]:
    """Every module in sys.modules after the command ran (name -> has code, i.e. not a namespace package)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "modules.json"
        subprocess.run(
            [str(PYTHON), "-c", _PROBE, "probe", *args],
            capture_output=True,
            check=False,
            env={**os.environ, "BENCH_MODULES_OUT": str(out)},
        )
        loaded: dict[str, bool] = json.loads(out.read_text())
        return loaded


def imports(args: list[str]) -> tuple[list[str], list[str], list[tuple[int, str]], int]:
    """(third-party top-level packages with code, SDK modules, slowest imports (cumulative us, name), total us)."""
    out = subprocess.run(
        [str(PYTHON), "-X", "importtime", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    slow: list[tuple[int, str]] = []
    total = 0
    for line in out.stderr.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        cumulative, depth, name = int(m.group(2)), len(m.group(3)) - 1, m.group(4)
        if depth == 0:  # a top-level import: its cumulative time counts once
            total += cumulative
        slow.append((cumulative, name))
    slow.sort(reverse=True)
    loaded = loaded_modules(args)
    third_party = sorted(
        {
            name.split(".")[0]
            for name, has_code in loaded.items()
            if has_code
            and name.split(".")[0] not in sys.stdlib_module_names
            and not name.startswith(("_", "storage_initializer"))
        }
    )
    sdks = sorted(name for name, has_code in loaded.items() if has_code and name.startswith(SDK_PREFIXES))
    return third_party, sdks, slow[:12], total


def cpu_ms(argv: list[str], runs: int) -> float:
    """Median CPU (user + system, ms) of ``argv`` run on one CPU (the last one), as a pod with ``cpu: 1``."""
    import resource

    cpus = []
    last_cpu = max(os.sched_getaffinity(0))
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
            preexec_fn=lambda: os.sched_setaffinity(0, {last_cpu}),
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append((after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000)
    return round(statistics.median(cpus), 1)


def floor(python: str, runs: int) -> dict[str, float]:
    return {
        "python_pass_cpu_ms": cpu_ms([python, "-c", "pass"], runs),
        "python_stdlib_floor_cpu_ms": cpu_ms([python, "-c", f"import {FLOOR_MODULES}"], runs),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument(
        "--floor", metavar="PYTHON", help="only print the interpreter's floor (CPU ms) for this python, then exit"
    )
    args = parser.parse_args()
    if args.floor:
        result = floor(args.floor, args.runs)
        print(json.dumps(result) if args.json else f"{result} (imports: {FLOOR_MODULES})")
        return 0
    subprocess.run([str(SCRIPT), "--help"], capture_output=True, check=False)  # warm the page cache / .pyc
    help_times = wall_times([str(SCRIPT), "--help"], args.runs)
    list_times = wall_times([str(SCRIPT), "--list-providers"], max(5, args.runs // 4))
    bare_times = wall_times([str(PYTHON), "-c", "pass"], 5)
    result: dict[str, object] = {
        "help_wall_s": {
            "median": round(statistics.median(help_times), 4),
            "min": round(min(help_times), 4),
            "max": round(max(help_times), 4),
            "runs": args.runs,
        },
        "list_providers_wall_s": {"median": round(statistics.median(list_times), 4), "runs": len(list_times)},
        "python_bare_wall_s": round(statistics.median(bare_times), 4),
        "load1": round(os.getloadavg()[0], 2),
    }
    for label, cli_args in (("help", ["--help"]), ("list_providers", ["--list-providers"])):
        third, sdks, slow, total = imports(cli_args)
        result[f"{label}_third_party_modules"] = third
        result[f"{label}_sdk_modules"] = sdks
        result[f"{label}_import_total_ms"] = round(total / 1000, 1)
        result[f"{label}_slowest_imports_ms"] = [(name, round(us / 1000, 1)) for us, name in slow]
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"storage-initializer --help: median {statistics.median(help_times):.3f} s (min {min(help_times):.3f}, "
        f"max {max(help_times):.3f}, {len(help_times)} runs; target < 0.3 s)"
    )
    print(f"storage-initializer --list-providers: median {statistics.median(list_times):.3f} s")
    print(f"bare `python -c pass`: {statistics.median(bare_times):.3f} s; load average {result['load1']}")
    for label in ("help", "list_providers"):
        third, sdks = result[f"{label}_third_party_modules"], result[f"{label}_sdk_modules"]
        slow = result[f"{label}_slowest_imports_ms"]
        assert isinstance(third, list) and isinstance(sdks, list) and isinstance(slow, list)
        print(f"\n--{label.replace('_', '-')}: imports take {result[f'{label}_import_total_ms']} ms")
        print(f"  third-party modules: {', '.join(third) or 'none'}")
        print(f"  provider SDK modules (with code, not namespace packages): {', '.join(sdks) or 'none'}")
        print("  slowest imports (cumulative ms): " + ", ".join(f"{n} {ms}" for n, ms in slow[:8]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
