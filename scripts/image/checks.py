#!/usr/bin/env python3
"""Run the built images exactly as users and KServe do, and check what they do.

    checks.py --image storage-initializer:test --slim-image storage-initializer:test-s3 --slim-providers s3

Every check runs ``docker run [--network=host] -v OUT:/mnt/models IMAGE SRC_URI /mnt/models``
(or a variation of it) against real servers started here on 127.0.0.1 (SeaweedFS for
S3, the tests' HTTP file server), then checks exit statuses, logs and the bytes on
disk. All checks run; the exit status is 1 if any failed. Called by
scripts/image-test.sh, which installs the engine and builds the images first.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import random
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.servers.fake_webhdfs import FakeWebHDFS  # noqa: E402
from tests.servers.ftp_server import FtpServer  # noqa: E402
from tests.servers.http_server import Fault, HttpFileServer  # noqa: E402
from tests.servers.s3 import SeaweedFS  # noqa: E402

DOCKER = os.environ.get("DOCKER", "docker")
README = ROOT / "README.md"
#: The unprivileged host user that runs the README's example (as a newcomer would).
EXAMPLE_UID = 1000
STATE_DIR = ".storage-initializer"
#: SDK distributions an image that serves only s3:// must not carry.
FOREIGN_TO_S3 = ("azure-", "google-", "huggingface-hub", "hf-xet", "hdfs")


class CheckFailed(AssertionError):
    pass


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def docker(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the docker CLI; the command is echoed like a shell trace."""
    shown = " ".join(a if len(a) < 100 and "\n" not in a else a.strip().splitlines()[0][:60] + " ..." for a in args)
    print(f"    $ docker {shown}", flush=True)
    return subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout)


def env_flags(env: Mapping[str, str]) -> list[str]:
    return [flag for key, value in env.items() for flag in ("-e", f"{key}={value}")]


def tree(root: Path) -> dict[str, bytes]:
    """Files below ``root`` (each DEST's resume-state directory left out)."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and STATE_DIR not in p.relative_to(root).parts
    }


def describe(files: Mapping[str, bytes]) -> str:
    return ", ".join(f"{k} ({len(v)} B, sha256 {hashlib.sha256(v).hexdigest()[:12]})" for k, v in files.items())


class Runner:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.image: str = args.image
        self.slim_image: str | None = args.slim_image
        self.slim_providers: list[str] = args.slim_providers.replace(",", " ").split() if args.slim_providers else []
        self.plugin_image: str | None = args.plugin_image
        self.work = work
        self.results: list[tuple[str, bool, float, str]] = []
        self._dirs = 0

    # -- plumbing -----------------------------------------------------------------
    def out_dir(self, owner: int | None = 1000, mode: int = 0o755) -> Path:
        """A fresh host directory to mount at /mnt/models (owned like KServe's emptyDir would be)."""
        self._dirs += 1
        path = self.work / f"out-{self._dirs}"
        path.mkdir(mode=mode)
        path.chmod(mode)
        if owner is not None:
            os.chown(path, owner, owner)
        return path

    def check(self, name: str, func: Callable[[], None]) -> None:
        print(f"--- {name}", flush=True)
        started = time.monotonic()
        try:
            func()
        except Exception as exc:
            detail = str(exc) if isinstance(exc, CheckFailed) else traceback.format_exc()
            self.results.append((name, False, time.monotonic() - started, detail))
            print(f"FAIL {name}: {detail}", flush=True)
        else:
            self.results.append((name, True, time.monotonic() - started, ""))
            print(f"ok   {name} ({time.monotonic() - started:.1f} s)", flush=True)

    def run_image(
        self,
        image: str,
        args: Sequence[str],
        out: Path | None,
        env: Mapping[str, str] | None = None,
        flags: Sequence[str] = (),
    ) -> subprocess.CompletedProcess[str]:
        """``docker run --rm --network=host [-v OUT:/mnt/models] IMAGE ARGS``."""
        volume = ["-v", f"{out}:/mnt/models"] if out is not None else []
        return docker("run", "--rm", "--network=host", *flags, *env_flags(env or {}), *volume, image, *args)

    def in_image(self, image: str, python: str) -> str:
        """Run a Python snippet with the image's interpreter (entrypoint bypassed)."""
        result = docker("run", "--rm", "--entrypoint", "/opt/venv/bin/python", image, "-c", python)
        expect(result.returncode == 0, f"python in {image} failed: {result.stderr[-2000:]}")
        return result.stdout

    def expect_download(self, result: subprocess.CompletedProcess[str], out: Path, want: Mapping[str, bytes]) -> None:
        expect(result.returncode == 0, f"exit status {result.returncode}, stderr:\n{result.stderr[-3000:]}")
        got = tree(out)
        expect(got == want, f"bytes differ:\n  want {describe(want)}\n  got  {describe(got)}")
        count = f"{len(got)} file" + ("" if len(got) == 1 else "s")
        print(f"    {count}, {sum(map(len, got.values()))} bytes identical", flush=True)


def readme_example(readme: Path = README) -> list[str]:
    """The shell commands of the README's ``docker run`` example, continuation lines joined.

    Taken from the README itself so the check and the documentation cannot drift apart:
    the ``sh`` block of the "Container image" section, from the first line after the
    ``docker build`` lines to the end of the block.
    """
    text = readme.read_text()
    section = text.split("\n## Container image", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [
        " ".join(part.strip() for part in command.split("\\\n")) for command in re.split(r"(?<!\\)\n", block.strip())
    ]
    example = [c for c in commands if not c.startswith("docker build")]
    expect(any(c.startswith("docker run") for c in example), f"no docker run example in the README: {block!r}")
    return example


def adapt_example(commands: Sequence[str], substitutions: Mapping[str, str]) -> str:
    """The example as a script, with placeholders (image tag, endpoint, keys, URI) filled in.

    Each pattern must match exactly once: a README change that breaks the example's shape
    fails here rather than being silently skipped.
    """
    script = "\n".join(commands)
    for pattern, value in substitutions.items():
        script, count = re.subn(pattern, value.replace("\\", "\\\\"), script)
        expect(count == 1, f"the README example has {count} matches for {pattern!r}:\n{script}")
    return "set -eu\n" + script + "\n"


def readme_script(image: str, s3_env: Mapping[str, str], s3_uri: str) -> str:
    """The README's example for this test: the image under test, the S3 server's endpoint and keys."""
    return adapt_example(
        readme_example(),
        {
            r"storage-initializer:0\.1\.0(?= )": image,
            r"(?<=AWS_ENDPOINT_URL=)\S+": shlex.quote(s3_env["AWS_ENDPOINT_URL"]),
            r"(?<=AWS_ACCESS_KEY_ID=)\S+": shlex.quote(s3_env["AWS_ACCESS_KEY_ID"]),
            r"(?<=AWS_SECRET_ACCESS_KEY=)\S+": shlex.quote(s3_env["AWS_SECRET_ACCESS_KEY"]),
            r"s3://models/iris(?= )": s3_uri,
        },
    )


@contextmanager
def docker_socket_for(gid: int) -> Iterator[bool]:
    """Let group ``gid`` use the image test's private engine for a while (True if it can)."""
    host = os.environ.get("DOCKER_HOST", "")
    sock = Path(host.removeprefix("unix://")) if host.startswith("unix://") else None
    work = Path(os.environ.get("SI_WORK", "/nonexistent"))
    if sock is None or not sock.exists() or work not in sock.parents:
        yield False  # a shared engine: its socket's permissions are not ours to change
        return
    before = sock.stat()
    os.chown(sock, before.st_uid, gid)
    sock.chmod(0o660)
    try:
        yield True
    finally:
        os.chown(sock, before.st_uid, before.st_gid)
        sock.chmod(stat.S_IMODE(before.st_mode))


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


@contextmanager
def servers() -> Iterator[tuple[SeaweedFS, HttpFileServer, FtpServer]]:
    s3 = SeaweedFS()
    http = HttpFileServer()
    ftp = FtpServer()
    try:
        yield s3, http, ftp
    finally:
        ftp.stop()
        http.stop()
        s3.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", required=True, help="the image with every provider")
    parser.add_argument("--slim-image", help="an image built with --build-arg PROVIDERS=...")
    parser.add_argument("--slim-providers", default="", help="the PROVIDERS value of --slim-image")
    parser.add_argument("--plugin-image", help="an image built with PROVIDERS=none EXTRA_PACKAGES=./examples/ftp")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("checks.py: run as root (output directories are chowned to the container's uids)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="image-checks-", dir=os.environ.get("SI_WORK")))
    runner = Runner(args, work)
    try:
        with servers() as (s3, http, ftp):
            run_checks(runner, s3, http, ftp)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n=== image checks")
    for name, ok, seconds, _ in runner.results:
        print(f"{'ok  ' if ok else 'FAIL'} {seconds:6.1f} s  {name}")
    failed = [r for r in runner.results if not r[1]]
    print(f"{len(runner.results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def run_checks(r: Runner, s3: SeaweedFS, http: HttpFileServer, ftp: FtpServer) -> None:
    image = r.image
    bucket = s3.new_bucket("image")
    model = {
        "config.json": json.dumps({"model_type": "demo", "layers": 4}).encode(),
        "weights/model-00001.bin": payload(24 * 1024 * 1024 + 17, 1),
        "weights/model-00002.bin": payload(3 * 1024 * 1024, 2),
        "tokenizer/vocab.txt": b"hello\nworld\n",
        "empty.txt": b"",
    }
    for key, data in model.items():
        s3.put(bucket, f"model/{key}", data)
    s3.put(bucket, "model-v2/not-this.bin", b"a sibling prefix, never downloaded")
    s3_uri = f"s3://{bucket}/model"
    s3_env = s3.env()
    onnx = payload(5 * 1024 * 1024 + 3, 3)
    onnx_url = http.add("/models/demo/model.onnx", onnx)
    stall_url = http.add("/models/stall/model.bin", payload(1024 * 1024, 4), ranges=False)
    http.faults["/models/stall/model.bin"] = Fault(hold_from=0, hold_seconds=120)

    def image_config() -> None:
        result = docker("image", "inspect", image, "--format", "{{json .Config}}")
        expect(result.returncode == 0, result.stderr)
        config = json.loads(result.stdout)
        expect(config["User"] == "1000", f"USER is {config['User']!r}, want 1000")
        expect(config["Entrypoint"] == ["/entrypoint.sh"], f"ENTRYPOINT is {config['Entrypoint']}")
        listing = docker(
            "run", "--rm", "--entrypoint", "/bin/sh", image, "-c",
            "for c in gcc cc c++ g++ clang ld make pip pip3; do command -v $c; done; stat -c '%u:%g %a' /mnt/models",
        )  # fmt: skip
        lines = listing.stdout.split()
        expect(lines == ["1000:0", "775"], f"compilers/pip present or /mnt/models wrong: {listing.stdout!r}")
        print("    USER 1000, ENTRYPOINT /entrypoint.sh, no compiler or pip, /mnt/models 1000:0 0775", flush=True)

    def providers_load() -> None:
        result = r.run_image(image, ["--list-providers"], None)
        expect(result.returncode == 0, result.stderr)
        print("    " + result.stdout.strip().replace("\n", "\n    "), flush=True)
        expect("BROKEN" not in result.stdout and "MISSING" not in result.stdout, "a provider cannot load")
        names = {line.split()[0] for line in result.stdout.splitlines() if line and not line.startswith(" ")}
        want = {"local"} | declared_providers(ROOT / "providers")
        expect(want <= names, f"providers missing from the image: {sorted(want - names)}")

    def s3_download() -> None:
        out = r.out_dir()
        result = r.run_image(image, [s3_uri, "/mnt/models"], out, s3_env)
        r.expect_download(result, out, model)
        owners = {p.stat().st_uid for p in out.rglob("*")}
        expect(owners == {1000}, f"files owned by {owners}, want uid 1000")
        expect(s3.secret_key not in result.stderr, "the secret key appears in the logs")

    def http_download() -> None:
        out = r.out_dir()
        result = r.run_image(image, [onnx_url, "/mnt/models"], out)
        r.expect_download(result, out, {"model.onnx": onnx})

    def several_pairs() -> None:
        out = r.out_dir()
        result = r.run_image(image, [s3_uri, "/mnt/models/a", onnx_url, "/mnt/models/b"], out, s3_env)
        want = {**{f"a/{k}": v for k, v in model.items()}, "b/model.onnx": onnx}
        r.expect_download(result, out, want)

    def read_only_arbitrary_uid() -> None:
        # What the manifests' securityContext asks for, with an OpenShift-style uid in group 0
        # and a KServe-style emptyDir (world-writable). No /tmp, no writable HOME.
        out = r.out_dir(owner=None, mode=0o777)
        flags = ["--read-only", "--user", "1000650000:0", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
        result = r.run_image(image, [s3_uri, "/mnt/models/s3", onnx_url, "/mnt/models/http"], out, s3_env, flags)
        want = {**{f"s3/{k}": v for k, v in model.items()}, "http/model.onnx": onnx}
        r.expect_download(result, out, want)
        owners = {p.stat().st_uid for p in out.rglob("*") if p != out}
        expect(owners == {1000650000}, f"files owned by {owners}")
        probe = (
            'for d in "$HOME" /tmp / /opt/venv; do touch "$d/.probe" 2>/dev/null && echo "writable: $d"; done;'
            ' echo "HOME=$HOME"'
        )
        home = docker(
            "run", "--rm", "--read-only", "--user", "1000650000:0", "--entrypoint", "/bin/sh", image, "-c", probe
        )
        expect("writable" not in home.stdout, f"something besides DEST was writable: {home.stdout!r}")
        print(f"    nothing writable but /mnt/models ({home.stdout.strip()})", flush=True)

    def arbitrary_uid_image_dest() -> None:
        # OpenShift: an arbitrary uid in group 0, writing the image's own /mnt/models (1000:0
        # 0775, no volume), root filesystem writable so that a stray write would succeed
        # silently: `docker diff` must show nothing changed outside /mnt/models.
        run = docker("run", "-d", "--network=host", "--user", "1000650000:0", image, onnx_url, "/mnt/models")
        expect(run.returncode == 0, run.stderr)
        container = run.stdout.strip()
        try:
            status = docker("wait", container, timeout=120).stdout.strip()
            logs = docker("logs", container).stderr
            copied = r.work / "copied-model.onnx"
            cp = docker("cp", f"{container}:/mnt/models/model.onnx", str(copied))
            changed = docker("diff", container).stdout.split("\n")
        finally:
            docker("rm", "-f", container)
        expect(status == "0", f"exit status {status}, want 0:\n{logs}")
        expect(cp.returncode == 0 and copied.read_bytes() == onnx, f"model.onnx missing or different: {cp.stderr}")
        stray = [line for line in changed if line and line.split()[-1] not in ("/mnt", "/mnt/models")
                 and not line.split()[-1].startswith("/mnt/models/")]  # fmt: skip
        expect(not stray, f"written outside /mnt/models: {stray}")
        print("    identical; nothing written outside /mnt/models", flush=True)

    def hdfs_storage_spec_read_only() -> None:
        # KServe's storage spec (STORAGE_CONFIG) carries HDFS file secrets base64-encoded; the
        # provider writes them to a temp dir. With the manifests' read-only root filesystem
        # there is no /tmp: the image's TMPDIR (/dev/shm) must serve.
        hdfs = FakeWebHDFS().start()
        try:
            files = {"config.json": b'{"hdfs": true}', "weights/model.bin": payload(2 * 1024 * 1024 + 9, 6)}
            for key, data in files.items():
                hdfs.put(f"/models/iris/{key}", data)
            pem = Path("/etc/ssl/certs/ca-certificates.crt").read_text().split("-----END CERTIFICATE-----")[0]
            spec = {
                "type": "hdfs",
                "HDFS_NAMENODE": hdfs.url,
                "TLS_CA": base64.b64encode(f"{pem}-----END CERTIFICATE-----\n".encode()).decode(),
            }
            out = r.out_dir(owner=None, mode=0o777)
            flags = ["--read-only", "--user", "1000650000:0", "--cap-drop", "ALL"]
            env = {"STORAGE_CONFIG": json.dumps(spec)}
            result = r.run_image(image, ["hdfs:///models/iris", "/mnt/models"], out, env, flags)
            r.expect_download(result, out, files)
        finally:
            hdfs.stop()

    def readme_example_as_written() -> None:
        # A newcomer copies the README's lines into a shell in an empty directory, as themself.
        script = readme_script(image, s3_env, s3_uri)
        r.work.chmod(0o711)  # mkdtemp's 0700 would keep the user out of its own directory below
        home = r.work / "newcomer"
        home.mkdir(mode=0o755)
        shim = r.work / "shim"  # `docker` in the README is the engine under test
        shim.mkdir(exist_ok=True)
        (shim / "docker").unlink(missing_ok=True)
        (shim / "docker").symlink_to(shutil.which(DOCKER) or DOCKER)
        env = {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}", "HOME": str(home)}
        with docker_socket_for(EXAMPLE_UID) as unprivileged:
            if unprivileged:
                os.chown(home, EXAMPLE_UID, EXAMPLE_UID)
                command = ["setpriv", f"--reuid={EXAMPLE_UID}", f"--regid={EXAMPLE_UID}", "--clear-groups"]
            else:
                command = []
                print("    (a shared Docker engine: the example runs as root here)", flush=True)
            print("    " + script.strip().replace("\n", "\n    "), flush=True)
            result = subprocess.run(
                [*command, "bash", "-c", script], cwd=home, env=env, capture_output=True, text=True, timeout=300
            )
        r.expect_download(result, home / "out", model)
        if unprivileged:
            owners = {(p.stat().st_uid, p.stat().st_gid) for p in (home / "out").rglob("*")}
            expect(owners == {(EXAMPLE_UID, EXAMPLE_UID)}, f"files owned by {owners}, want the user's")
            print(f"    ran as uid {EXAMPLE_UID}; out/ and every file belong to that user", flush=True)

    def usage_error() -> None:
        result = r.run_image(image, ["s3://only-one-argument"], None)
        expect(result.returncode == 2, f"exit status {result.returncode}, want 2; stderr: {result.stderr}")
        expect("SRC_URI DEST_PATH" in result.stderr, f"no usage message: {result.stderr!r}")
        print(f"    exit 2: {result.stderr.strip()}", flush=True)

    def failing_source() -> None:
        out = r.out_dir()
        missing = f"s3://{bucket}/no-such-model"
        # The kubelet bind-mounts a writable file at /dev/termination-log; `kubectl describe` shows it.
        termination_log = r.work / "termination-log"
        termination_log.write_text("")
        termination_log.chmod(0o666)
        run = docker("run", "-d", "--network=host", *env_flags(s3_env), "-v", f"{out}:/mnt/models",
                     "-v", f"{termination_log}:/dev/termination-log", image, missing, "/mnt/models")  # fmt: skip
        expect(run.returncode == 0, run.stderr)
        container = run.stdout.strip()
        try:
            status = docker("wait", container, timeout=120).stdout.strip()
            logs = docker("logs", container)
        finally:
            docker("rm", "-f", container)
        expect(status == "1", f"exit status {status}, want 1")
        errors = [line for line in logs.stderr.splitlines() if " ERROR " in line]
        expect(len(errors) == 1 and missing in errors[0], f"want one ERROR line naming {missing}:\n{logs.stderr}")
        expect(s3.secret_key not in logs.stderr + logs.stdout, "the secret key appears in the logs")
        expect(tree(out) == {}, f"files left behind: {list(tree(out))}")
        message = termination_log.read_text()
        expect(missing in message, f"/dev/termination-log does not name {missing}: {message!r}")
        expect(s3.secret_key not in message, "the secret key appears in the termination log")
        print(f"    exit 1: {errors[0]}", flush=True)
        print(f"    /dev/termination-log: {message.strip()[:200]}", flush=True)

    def sigterm_reaches_python() -> None:
        out = r.out_dir()
        run = docker("run", "-d", "--network=host", "-v", f"{out}:/mnt/models", image, stall_url, "/mnt/models")
        expect(run.returncode == 0, run.stderr)
        container = run.stdout.strip()
        try:
            deadline = time.monotonic() + 60
            while "start:" not in docker("logs", container).stderr and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(1)  # let the request reach the (stalled) server
            stopped = time.monotonic()
            docker("stop", "--time", "30", container, timeout=60)
            status = docker("wait", container).stdout.strip()
            seconds = time.monotonic() - stopped
            logs = docker("logs", container).stderr
        finally:
            docker("rm", "-f", container)
        expect(status == "143", f"exit status {status} after SIGTERM, want 143 (Python's handler)\n{logs}")
        expect("SIGTERM" in logs, f"no SIGTERM message in the logs:\n{logs}")
        print(f"    exit 143 {seconds:.1f} s after docker stop", flush=True)

    def slim_image() -> None:
        assert r.slim_image is not None
        names = r.slim_providers
        listed = r.run_image(r.slim_image, ["--list-providers"], None)
        print("    " + listed.stdout.strip().replace("\n", "\n    "), flush=True)
        got = {line.split()[0] for line in listed.stdout.splitlines() if line and not line.startswith(" ")}
        want = {"local"} | declared_providers(ROOT / "providers", only=names)
        expect(got == want, f"slim image providers {sorted(got)}, want {sorted(want)}")
        dists = json.loads(
            r.in_image(r.slim_image, "import json, importlib.metadata as m; print(json.dumps(sorted({d.name.lower() for d in m.distributions()})))")  # noqa: E501
        )  # fmt: skip
        print(f"    distributions: {' '.join(dists)}", flush=True)
        if set(names) == {"s3"}:
            foreign = [d for d in dists if d.startswith(FOREIGN_TO_S3)]
            expect(not foreign, f"the s3 image carries other SDKs: {foreign}")
        # The SDK modules of the providers left out must not be importable.
        requires = json.loads(r.in_image(image, REQUIRES_SNIPPET))
        kept = {m for name in got for m in requires.get(name, [])}
        absent = sorted({m for name, mods in requires.items() if name not in got for m in mods} - kept)
        if absent:
            found = json.loads(
                r.in_image(r.slim_image, f"import json, importlib.util as u; print(json.dumps([m for m in {absent!r} if u.find_spec(m.split('.')[0])]))")  # noqa: E501
            )  # fmt: skip
            expect(not found, f"modules of left-out providers are importable: {found}")
        if "s3" in names:
            out = r.out_dir()
            r.expect_download(r.run_image(r.slim_image, [s3_uri, "/mnt/models"], out, s3_env), out, model)
        size = docker("image", "inspect", r.slim_image, "--format", "{{.Size}}").stdout.strip()
        full = docker("image", "inspect", image, "--format", "{{.Size}}").stdout.strip()
        print(f"    image sizes: slim {int(size) / 1e6:.0f} MB, full {int(full) / 1e6:.0f} MB", flush=True)

    def plugin_image() -> None:
        assert r.plugin_image is not None
        listed = r.run_image(r.plugin_image, ["--list-providers"], None)
        got = {line.split()[0] for line in listed.stdout.splitlines() if line and not line.startswith(" ")}
        expect(got == {"local", "ftp"}, f"providers {sorted(got)}, want only local and ftp:\n{listed.stdout}")
        d = ftp.new_dir()
        tree = {"config.json": b"{}", "weights/model.bin": payload(2 * 1024 * 1024 + 1, 5)}
        for key, data in tree.items():
            ftp.put(f"{d}/model/{key}", data)
        out = r.out_dir()
        result = r.run_image(r.plugin_image, [ftp.uri(f"{d}/model"), "/mnt/models"], out, ftp.env())
        r.expect_download(result, out, tree)
        expect(ftp.password not in result.stderr, "the FTP password appears in the logs")

    r.check("image config: uid 1000, entrypoint, no compilers", image_config)
    r.check("every provider loads in the image", providers_load)
    r.check("s3:// from SeaweedFS, bytes identical", s3_download)
    r.check("http:// source, bytes identical", http_download)
    r.check("two SRC DEST pairs in one run", several_pairs)
    r.check("--read-only, uid 1000650000:0, cap-drop ALL, no HOME", read_only_arbitrary_uid)
    r.check("uid 1000650000:0 writes the image's /mnt/models, nothing else", arbitrary_uid_image_dest)
    r.check("hdfs:// with STORAGE_CONFIG file secrets, --read-only, uid 1000650000:0", hdfs_storage_spec_read_only)
    r.check("the README's docker run example, as written, by an unprivileged user", readme_example_as_written)
    r.check("wrong argument count: exit 2 + usage", usage_error)
    r.check("failing source: exit 1, one ERROR line in docker logs and /dev/termination-log", failing_source)
    r.check("docker stop: SIGTERM reaches Python, exit 143", sigterm_reaches_python)
    if r.slim_image:
        r.check(f"slim image (PROVIDERS={' '.join(r.slim_providers)})", slim_image)
    if r.plugin_image:
        r.check("third-party plugin image (PROVIDERS=none EXTRA_PACKAGES=./examples/ftp)", plugin_image)


REQUIRES_SNIPPET = """
import json
from storage_initializer.registry import Registry
print(json.dumps({e.name: list(e.cls.requires) for e in Registry.from_entry_points().loaded()}))
"""


def declared_providers(providers_dir: Path, only: Sequence[str] | None = None) -> set[str]:
    """Entry-point names declared by providers/*/pyproject.toml (optionally only some dirs)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    names: set[str] = set()
    wanted = {n.replace("-", "_") for n in only} if only is not None else None
    for pyproject in sorted(providers_dir.glob("*/pyproject.toml")):
        if wanted is not None and pyproject.parent.name not in wanted:
            continue
        data = tomllib.loads(pyproject.read_text())
        names |= set(data.get("project", {}).get("entry-points", {}).get("storage_initializer.providers", {}))
    return names


if __name__ == "__main__":
    sys.exit(main())
