"""Pins, model signatures and the record, through the real command.

Models are signed by the real ``model-signing`` library (keys made with
``cryptography``; a CA and a leaf certificate made here). Every rejected
model leaves DEST without any file of it.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import shutil
import tarfile
from collections.abc import Mapping
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.cli import run_cli
from tests.servers.fake_hf import FakeHFHub
from tests.servers.fake_model_registry import FakeModelRegistry
from tests.servers.http_server import Fault, HttpFileServer
from tests.servers.s3 import SeaweedFS

MODEL = {
    "config.json": b'{"hidden": 8}\n',
    "weights/model.safetensors": os.urandom(70_000),
    "tokenizer.txt": b"a b c\n",
}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_in(root: Path) -> dict[str, bytes]:
    """Every regular file below root, nothing left out (no state dir, no staging)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def everything_in(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) if root.exists() else []


def write_tree(root: Path, files: Mapping[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if " ERROR " in line]


def manifest_file(path: Path, files: Mapping[str, bytes]) -> Path:
    path.write_text("".join(f"{sha(data)}  {rel}\n" for rel, data in files.items()))
    return path


# -- digest pins -----------------------------------------------------------------------------------
def test_digest_pin_on_http_ok_and_mismatch(http_server: HttpFileServer, tmp_path: Path) -> None:
    data = os.urandom(200_000)
    url = http_server.add("/m/model.onnx", data)
    ok = run_cli(["--expect-digest", f"sha256:{sha(data)}", url, str(tmp_path / "ok")])
    assert ok.returncode == 0, ok.stderr
    assert files_in(tmp_path / "ok") == {"model.onnx": data}  # nothing else: no state, no staging
    assert "(hashed while streaming)" in ok.stderr  # no second read of the file

    wrong = sha(b"another model")
    bad = run_cli(["--expect-digest", f"sha256:{wrong}", url, str(tmp_path / "bad")])
    assert bad.returncode == 1
    (line,) = error_lines(bad.stderr)
    assert f"model.onnx: sha256 is {sha(data)}, --expect-digest pins {wrong}" in line
    assert everything_in(tmp_path / "bad") == []


def test_digest_pin_from_the_environment_and_a_bad_value(http_server: HttpFileServer, tmp_path: Path) -> None:
    data = b"weights" * 1000
    url = http_server.add("/model.bin", data)
    env = {"STORAGE_INITIALIZER_EXPECT_DIGEST": f"sha256:{sha(data)}"}
    assert run_cli([url, str(tmp_path / "ok")], env).returncode == 0
    assert files_in(tmp_path / "ok") == {"model.bin": data}
    bad = run_cli(["--expect-digest", "md5:1234", url, str(tmp_path / "x")])
    assert bad.returncode == 2
    assert "--expect-digest 'md5:1234' is not a sha256 digest" in bad.stderr
    assert not (tmp_path / "x").exists()


def test_digest_pin_of_an_archive_is_checked_before_extraction(http_server: HttpFileServer, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for rel, data in MODEL.items():
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    archive = buf.getvalue()
    url = http_server.add("/model.tar.gz", archive)
    ok = run_cli(["--expect-digest", f"sha256:{sha(archive)}", url, str(tmp_path / "ok")])
    assert ok.returncode == 0, ok.stderr
    assert files_in(tmp_path / "ok") == MODEL
    bad = run_cli(["--expect-digest", f"sha256:{sha(b'x')}", url, str(tmp_path / "bad")])
    assert bad.returncode == 1 and f"model.tar.gz: sha256 is {sha(archive)}" in bad.stderr
    assert everything_in(tmp_path / "bad") == []


def test_digest_pin_on_a_directory_is_a_usage_error(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", MODEL)
    result = run_cli(["--expect-digest", f"sha256:{sha(b'x')}", str(src), str(tmp_path / "out")])
    assert result.returncode == 2
    assert "--expect-digest needs a URI naming one file or one archive" in result.stderr
    assert "names 3 files (use --expect-manifest for a directory)" in result.stderr
    assert everything_in(tmp_path / "out") == []


def test_pins_are_per_pair(http_server: HttpFileServer, tmp_path: Path) -> None:
    one, two = b"one" * 100, b"two" * 100
    url1, url2 = http_server.add("/a/one.bin", one), http_server.add("/b/two.bin", two)
    args = [
        "--expect-digest",
        f"{url1}=sha256:{sha(one)}",
        "--expect-digest",
        f"{url2}=sha256:{sha(two)}",
        url1,
        str(tmp_path / "a"),
        url2,
        str(tmp_path / "b"),
    ]
    ok = run_cli(args)
    assert ok.returncode == 0, ok.stderr
    assert files_in(tmp_path / "a") == {"one.bin": one} and files_in(tmp_path / "b") == {"two.bin": two}
    swapped = [*args[:2], "--expect-digest", f"{url1}=sha256:{sha(two)}", *args[2:]]
    bad = run_cli(swapped)
    assert bad.returncode == 2 and "--expect-digest gives 2 different values for" in bad.stderr


def test_digest_and_manifest_pins_on_s3(seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    bucket = seaweedfs.new_bucket("pins")
    data = os.urandom(100_000)
    seaweedfs.put(bucket, "single/model.bin", data, ChecksumAlgorithm="SHA256")
    seaweedfs.put_many(bucket, {f"dir/{k}": v for k, v in MODEL.items()})
    env = seaweedfs.env()
    uri = f"s3://{bucket}/single/model.bin"
    ok = run_cli(["--expect-digest", f"sha256:{sha(data)}", uri, str(tmp_path / "one")], env)
    assert ok.returncode == 0, ok.stderr
    assert files_in(tmp_path / "one") == {"model.bin": data}
    assert "the store's sha256, verified while streaming" in ok.stderr  # S3 ChecksumSHA256: no second read
    bad = run_cli(["--expect-digest", f"sha256:{sha(b'no')}", uri, str(tmp_path / "bad")], env)
    assert bad.returncode == 1 and "model.bin: sha256 is" in bad.stderr
    assert everything_in(tmp_path / "bad") == []

    pins = manifest_file(tmp_path / "SHA256SUMS", MODEL)
    ok = run_cli(["--expect-manifest", str(pins), "--strict-manifest", f"s3://{bucket}/dir", str(tmp_path / "d")], env)
    assert ok.returncode == 0, ok.stderr
    assert files_in(tmp_path / "d") == MODEL
    seaweedfs.put(bucket, "dir/config.json", b'{"hidden": 9}\n')
    bad = run_cli(["--expect-manifest", str(pins), f"s3://{bucket}/dir", str(tmp_path / "d2")], env)
    assert bad.returncode == 1 and "config.json: sha256 is" in bad.stderr and "--expect-manifest pins" in bad.stderr
    assert everything_in(tmp_path / "d2") == []


def test_digest_and_manifest_pins_on_hf_reuse_the_lfs_sha256(fake_hf_hub: FakeHFHub, tmp_path: Path) -> None:
    hub = fake_hf_hub
    weights = os.urandom(150_000)
    hub.add_repo("acme/pinned", {"model.safetensors": weights, "config.json": b"{}"})
    env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home")}
    uri = "hf://acme/pinned/model.safetensors"
    ok = run_cli(["--expect-digest", f"sha256:{sha(weights)}", uri, str(tmp_path / "one")], env)
    assert ok.returncode == 0, ok.stderr
    assert files_in(tmp_path / "one") == {"model.safetensors": weights}
    assert "the store's sha256, verified while streaming" in ok.stderr  # the LFS oid: no second read
    bad = run_cli(["--expect-digest", f"sha256:{sha(b'x')}", uri, str(tmp_path / "bad")], env)
    assert bad.returncode == 1 and f"model.safetensors: sha256 is {sha(weights)}" in bad.stderr
    assert everything_in(tmp_path / "bad") == []
    pins = manifest_file(tmp_path / "pins", {"model.safetensors": weights, "config.json": b"{}"})
    ok = run_cli(["--expect-manifest", str(pins), "--strict-manifest", "hf://acme/pinned", str(tmp_path / "d")], env)
    assert ok.returncode == 0, ok.stderr
    assert files_in(tmp_path / "d") == {"model.safetensors": weights, "config.json": b"{}"}


# -- manifest pins ---------------------------------------------------------------------------------
def test_manifest_pin_ok_mismatch_missing_and_extra(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", MODEL)
    pins = manifest_file(tmp_path / "SHA256SUMS", MODEL)
    ok = run_cli(["--expect-manifest", str(pins), "--strict-manifest", str(src), str(tmp_path / "ok")])
    assert ok.returncode == 0, ok.stderr
    assert files_in(tmp_path / "ok") == MODEL

    (src / "tokenizer.txt").write_bytes(b"tampered\n")
    bad = run_cli(["--expect-manifest", str(pins), str(src), str(tmp_path / "mismatch")])
    assert bad.returncode == 1
    (line,) = error_lines(bad.stderr)
    assert f"tokenizer.txt: sha256 is {sha(b'tampered' + bytes([10]))}, --expect-manifest pins" in line
    assert everything_in(tmp_path / "mismatch") == []
    (src / "tokenizer.txt").write_bytes(MODEL["tokenizer.txt"])

    (src / "config.json").unlink()
    missing = run_cli(["--expect-manifest", str(pins), str(src), str(tmp_path / "missing")])
    assert missing.returncode == 1
    assert f"config.json: listed in --expect-manifest {pins} but not in the model" in missing.stderr
    assert everything_in(tmp_path / "missing") == []
    (src / "config.json").write_bytes(MODEL["config.json"])

    (src / "extra.py").write_bytes(b"import os")
    lax = run_cli(["--expect-manifest", str(pins), str(src), str(tmp_path / "lax")])
    assert lax.returncode == 0, lax.stderr  # without --strict-manifest another file may exist
    strict = run_cli(["--expect-manifest", str(pins), "--strict-manifest", str(src), str(tmp_path / "strict")])
    assert strict.returncode == 1
    assert "extra.py: in the model but not in --expect-manifest" in strict.stderr
    assert everything_in(tmp_path / "strict") == []


def test_malformed_manifest_is_a_usage_error(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", MODEL)
    pins = tmp_path / "pins"
    pins.write_text(f"{sha(b'x')}  ../etc/passwd\n")
    result = run_cli(["--expect-manifest", str(pins), str(src), str(tmp_path / "out")])
    assert result.returncode == 2 and "is not a relative path in the model" in result.stderr
    pins.write_text("not a manifest\n")
    result = run_cli(["--expect-manifest", str(pins), str(src), str(tmp_path / "out")])
    assert result.returncode == 2 and "line 1 is not 'SHA256  PATH'" in result.stderr


# -- resume with staging ---------------------------------------------------------------------------
def test_staged_download_resumes_across_runs(http_server: HttpFileServer, tmp_path: Path) -> None:
    mib = 1024 * 1024
    data = os.urandom(8 * mib)
    url = http_server.add("/big.bin", data)
    # Parts one after another; the 6th request is refused: a few parts are in the stage.
    http_server.faults["/big.bin"] = Fault(status_codes=[404], status_skip=5)
    env = {
        "STORAGE_INITIALIZER_MULTIPART_THRESHOLD": "1M",
        "STORAGE_INITIALIZER_PART_SIZE": "1M",
        "STORAGE_INITIALIZER_FILE_CONCURRENCY": "1",
        "STORAGE_INITIALIZER_RETRIES": "0",
    }
    dest = tmp_path / "out"
    pin = ["--expect-digest", f"sha256:{sha(data)}"]
    first = run_cli([*pin, url, str(dest)], env)
    assert first.returncode == 1
    assert not (dest / "big.bin").exists()
    assert [p for p in everything_in(dest) if not p.startswith(".si-staging")] == []  # only the stage
    http_server.reset_counters()
    second = run_cli([*pin, url, str(dest)], env)
    assert second.returncode == 0, second.stderr
    assert "resuming big.bin" in second.stderr
    assert http_server.bytes_sent <= len(data) - 2 * mib  # the parts of the first run were kept
    assert files_in(dest) == {"big.bin": data}
    assert everything_in(dest) == ["big.bin"]


# -- the record and the termination message --------------------------------------------------------
def test_record_field_by_field_and_termination_message(fake_hf_hub: FakeHFHub, tmp_path: Path) -> None:
    hub = fake_hf_hub
    weights = os.urandom(120_000)
    commit = hub.add_repo("acme/rec", {"model.safetensors": weights, "config.json": b'{"a": 1}'})
    record, termination = tmp_path / "record.json", tmp_path / "termination-log"
    env = {
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp_path / "hf-home"),
        "STORAGE_INITIALIZER_TERMINATION_LOG": str(termination),
        "STORAGE_INITIALIZER_RECORD": str(record),
    }
    pins = manifest_file(tmp_path / "pins", {"model.safetensors": weights})
    result = run_cli(["--expect-manifest", str(pins), f"hf://acme/rec:{commit}", str(tmp_path / "out")], env)
    assert result.returncode == 0, result.stderr
    data = record.read_bytes()
    doc = json.loads(data)
    assert doc["record_version"] == 1 and doc["tool"].startswith("storage-initializer ")
    (pair,) = doc["pairs"]
    assert pair["uri"] == f"hf://acme/rec:{commit}"
    assert pair["dest"] == str(tmp_path / "out")
    assert pair["source"] == f"hf://acme/rec:{commit}" and pair["resolved"] == []
    assert pair["source_details"] == {"repo": "acme/rec", "revision": commit, "commit": commit}
    assert pair["provider"] == "HfProvider" and pair["status"] == "ok"
    assert pair["file_count"] == 2 and pair["bytes"] == len(weights) + 8
    assert pair["pins"] == {"manifest": {"files": 1, "strict": False}}
    files = {f["path"]: f for f in pair["files"]}
    lfs = hub.blob("acme/rec", "model.safetensors")
    assert files["model.safetensors"] == {
        "path": "model.safetensors",
        "size": len(weights),
        "version": lfs.oid,
        "checksums": {"sha256": sha(weights)},
        # The LFS oid is the sha256 the store announces: verified while streaming serves the pin too.
        "verified_by": {"sha256": {"against": ["store", "--expect-manifest"], "hashed": "while streaming"}},
    }
    config = files["config.json"]
    assert config["size"] == 8 and config["version"] == hub.blob("acme/rec", "config.json").oid
    assert config["checksums"] == {"git-sha1": config["version"]}
    message = termination.read_text()
    digest = "sha256:" + sha(data)
    assert message == f"downloaded hf://acme/rec:{commit} (2 files, {len(weights) + 8} bytes); record {digest}\n"
    # A branch: the record names the commit it resolved to.
    branch = run_cli(["hf://acme/rec", str(tmp_path / "branch")], env)
    assert branch.returncode == 0, branch.stderr
    (pair,) = json.loads(record.read_bytes())["pairs"]
    assert pair["source_details"] == {"repo": "acme/rec", "revision": "main", "commit": commit}


def test_record_of_a_failure_and_of_a_resolved_source(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"a.bin": b"a"})
    record = tmp_path / "record.json"
    result = run_cli(
        ["--record", str(record), "--expect-digest", f"sha256:{sha(b'b')}", f"file://{src}/a.bin", str(tmp_path / "o")]
    )
    assert result.returncode == 1
    (pair,) = json.loads(record.read_text())["pairs"]
    assert pair["status"] == "error" and "a.bin: sha256 is" in pair["error"]
    assert pair["source"] == f"file://{src}/a.bin"


def test_record_names_the_source_a_model_registry_resolved_to(
    fake_model_registry: FakeModelRegistry, http_server: HttpFileServer, tmp_path: Path
) -> None:
    data = os.urandom(50_000)
    url = http_server.add("/models/iris-v1.bin", data)
    fake_model_registry.add_model("iris", versions=[{"name": "v1", "artifacts": [{"uri": url}]}])
    record = tmp_path / "record.json"
    env = {**fake_model_registry.env(), "HTTP_PROXY": fake_model_registry.url, "NO_PROXY": "127.0.0.1"}
    uri = "model-registry://iris/v1"
    pin = f"{uri}=sha256:{sha(data)}"  # a pin keyed by the URI as given
    result = run_cli(["--record", str(record), "--expect-digest", pin, uri, str(tmp_path / "out")], env)
    assert result.returncode == 0, result.stderr
    (pair,) = json.loads(record.read_text())["pairs"]
    assert pair["uri"] == uri and pair["source"] == url and pair["resolved"] == [url]
    assert pair["provider"] == "HttpProvider" and pair["pins"] == {"digest": f"sha256:{sha(data)}"}
    (entry,) = pair["files"]
    assert entry["path"] == "iris-v1.bin" and entry["size"] == len(data) and entry["sha256"] == sha(data)
    assert files_in(tmp_path / "out") == {"iris-v1.bin": data}


def test_a_record_that_cannot_be_written_fails_the_run(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"a.bin": b"a"})
    result = run_cli(["--record", str(tmp_path / "missing-dir" / "r.json"), str(src), str(tmp_path / "out")])
    assert result.returncode == 1
    (line,) = error_lines(result.stderr)
    assert f"cannot write the record {tmp_path}/missing-dir/r.json" in line


def test_termination_message_stays_under_4_kib(tmp_path: Path) -> None:
    args = []
    for i in range(40):
        name = "d" * 150 + str(i)
        write_tree(tmp_path / name, {"w.bin": b"w"})
        args += [str(tmp_path / name), str(tmp_path / "out" / str(i))]
    termination = tmp_path / "termination-log"
    result = run_cli(
        ["--record", str(tmp_path / "r.json"), *args], {"STORAGE_INITIALIZER_TERMINATION_LOG": str(termination)}
    )
    assert result.returncode == 0, result.stderr
    message = termination.read_bytes()
    assert len(message) < 4096 and message.count(b"\n") == 1
    assert message.startswith(b"downloaded ") and b"; record sha256:" in message


# -- signatures ------------------------------------------------------------------------------------
ms = pytest.importorskip("model_signing", reason="the signing extra is part of the test dependencies")


def _ec_key(path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    private = path.with_suffix(".key")
    public = path.with_suffix(".pub")
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


def _hashing() -> object:
    import model_signing.hashing

    return model_signing.hashing.Config().set_ignored_paths(paths=["model.sig"])


def sign_with_key(model: Path, private: Path, signature: Path | None = None) -> Path:
    import model_signing.signing

    signature = signature or model / "model.sig"
    config = model_signing.signing.Config().use_elliptic_key_signer(private_key=private)
    config.set_hashing_config(_hashing()).sign(model, signature)  # type: ignore[arg-type]
    return signature


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None, signer: object) -> bytes:
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
    cert = builder.sign(signer, hashes.SHA256())  # type: ignore[arg-type]
    return cert.public_bytes(serialization.Encoding.PEM)


def make_ca(path: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = _cert("test model-signing CA", key, None, key)
    path.write_bytes(pem)
    return key, x509.load_pem_x509_certificate(pem), path


def sign_with_cert(model: Path, tmp: Path, ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate) -> None:
    import model_signing.signing

    leaf_key = ec.generate_private_key(ec.SECP256R1())
    key_path, cert_path, chain_path = tmp / "leaf.key", tmp / "leaf.pem", tmp / "chain.pem"
    key_path.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    cert_path.write_bytes(_cert("model signer", leaf_key, ca, ca_key))
    chain_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    config = model_signing.signing.Config().use_certificate_signer(
        private_key=key_path, signing_certificate=cert_path, certificate_chain=[chain_path]
    )
    config.set_hashing_config(_hashing()).sign(model, model / "model.sig")  # type: ignore[arg-type]


@pytest.fixture
def signed(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A model signed with a fresh key: (model dir, private key, public key)."""
    model = write_tree(tmp_path / "model", {**MODEL, ".gitattributes": b"*.safetensors lfs\n"})
    private, public = _ec_key(tmp_path / "signer")
    sign_with_key(model, private)
    return model, private, public


def test_signed_model_with_a_key_is_published_and_recorded(signed: tuple[Path, Path, Path], tmp_path: Path) -> None:
    model, _, public = signed
    record = tmp_path / "record.json"
    out = tmp_path / "out"
    result = run_cli(["--signature-key", str(public), "--record", str(record), str(model), str(out)])
    assert result.returncode == 0, result.stderr
    assert files_in(out) == files_in(model)  # the model, its signature, nothing of ours
    assert "signature verified (key): model.sig" in result.stderr
    assert "the signature does not cover (ignored by the model-signing rules): .gitattributes, model.sig" in (
        result.stderr
    )
    (pair,) = json.loads(record.read_text())["pairs"]
    assert pair["signature"] == {
        "method": "key",
        "signature": "model.sig",
        "verified": True,
        "ignored": [".gitattributes", "model.sig"],
    }
    env_run = run_cli([str(model), str(tmp_path / "env")], {"STORAGE_INITIALIZER_SIGNATURE_KEY": str(public)})
    assert env_run.returncode == 0 and "signature verified (key)" in env_run.stderr


@pytest.mark.parametrize("change", ["tampered byte", "added file", "removed file", "swapped signature", "other key"])
def test_a_model_that_does_not_match_its_signature_is_not_published(
    signed: tuple[Path, Path, Path], tmp_path: Path, change: str
) -> None:
    model, private, public = signed
    expected = {
        "tampered byte": "content differs from the signed model: weights/model.safetensors",
        "added file": "files the signature does not cover: weights/extra.bin",
        "removed file": "signed files missing: tokenizer.txt",
        "swapped signature": "content differs from the signed model: config.json",
        "other key": "signature check (key) failed",
    }[change]
    if change == "tampered byte":
        path = model / "weights/model.safetensors"
        data = bytearray(path.read_bytes())
        data[1234] ^= 1
        path.write_bytes(bytes(data))
    elif change == "added file":
        (model / "weights/extra.bin").write_bytes(b"not signed")
    elif change == "removed file":
        (model / "tokenizer.txt").unlink()
    elif change == "swapped signature":  # the same signer's signature of another model
        other = write_tree(tmp_path / "other", {**MODEL, "config.json": b'{"hidden": 9}\n'})
        shutil.copy(sign_with_key(other, private), model / "model.sig")
    else:
        other_private, _ = _ec_key(tmp_path / "intruder")
        sign_with_key(model, other_private)
    out = tmp_path / "out"
    result = run_cli(["--signature-key", str(public), str(model), str(out)])
    assert result.returncode == 1
    (line,) = error_lines(result.stderr)
    assert "signature check (key) failed" in line and expected in line
    assert everything_in(out) == []  # nothing of the model, no stage left


def test_missing_signature_and_signature_given_as_a_uri(
    signed: tuple[Path, Path, Path], tmp_path: Path, http_server: HttpFileServer
) -> None:
    model, _, public = signed
    sig = (model / "model.sig").read_bytes()
    (model / "model.sig").unlink()
    missing = run_cli(["--signature-key", str(public), str(model), str(tmp_path / "a")])
    assert missing.returncode == 1 and "no signature model.sig at the root of" in missing.stderr
    assert everything_in(tmp_path / "a") == []
    url = http_server.add("/sigs/model.sig", sig)
    record = tmp_path / "record.json"
    args = ["--signature-key", str(public), "--signature", url, "--record", str(record)]
    ok = run_cli([*args, str(model), str(tmp_path / "b")])
    assert ok.returncode == 0, ok.stderr
    assert files_in(tmp_path / "b") == files_in(model)
    (pair,) = json.loads(record.read_text())["pairs"]
    assert pair["signature"]["signature"] == url and pair["signature"]["ignored"] == [".gitattributes"]


def test_certificate_chain_verification(tmp_path: Path) -> None:
    model = write_tree(tmp_path / "model", MODEL)
    ca_key, ca, ca_path = make_ca(tmp_path / "ca.pem")
    sign_with_cert(model, tmp_path, ca_key, ca)
    ok = run_cli(["--signature-cert", str(ca_path), str(model), str(tmp_path / "ok")])
    assert ok.returncode == 0, ok.stderr
    assert files_in(tmp_path / "ok") == files_in(model)
    assert "signature verified (certificate)" in ok.stderr
    _, _, other_ca = make_ca(tmp_path / "other-ca.pem")
    bad = run_cli(["--signature-cert", str(other_ca), str(model), str(tmp_path / "bad")])
    assert bad.returncode == 1 and "signature check (certificate) failed" in bad.stderr
    assert everything_in(tmp_path / "bad") == []


def test_sigstore_settings_are_checked_before_downloading(signed: tuple[Path, Path, Path], tmp_path: Path) -> None:
    model, _, public = signed
    out = str(tmp_path / "out")
    no_root = run_cli(["--signer-identity", "me@example.com", "--signer-issuer", "https://issuer", str(model), out])
    assert no_root.returncode == 2 and "sigstore verification needs --trust-root as well" in no_root.stderr
    two = run_cli(["--signature-key", str(public), "--signer-identity", "me@example.com", str(model), out])
    assert two.returncode == 2 and "choose one way to verify the model signature" in two.stderr
    not_root = tmp_path / "root.json"
    not_root.write_text('{"hello": 1}')
    args = ["--signer-identity", "me@example.com", "--signer-issuer", "https://issuer", "--trust-root", str(not_root)]
    bad_root = run_cli([*args, str(model), out])
    assert (
        bad_root.returncode == 2 and "is neither a sigstore trusted root nor a client trust config" in bad_root.stderr
    )
    assert everything_in(tmp_path / "out") == []


def test_a_trust_root_without_a_certificate_authority_is_refused_before_downloading(
    signed: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """Offline: the trust root is a file; one that cannot verify any identity fails before the download."""
    model, _, _ = signed
    root = tmp_path / "trusted_root.json"
    root.write_text(
        json.dumps(
            {
                "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
                "tlogs": [],
                "certificateAuthorities": [],
                "ctlogs": [],
                "timestampAuthorities": [],
            }
        )
    )
    env = {
        "STORAGE_INITIALIZER_SIGNER_IDENTITY": "someone@example.com",
        "STORAGE_INITIALIZER_SIGNER_ISSUER": "https://accounts.example.com",
        "STORAGE_INITIALIZER_TRUST_ROOT": str(root),
    }
    result = run_cli([str(model), str(tmp_path / "out")], env)
    assert result.returncode == 2
    assert "--trust-root: cannot load it for the sigstore signature check: Fulcio certificates not found" in (
        result.stderr
    )
    assert not (tmp_path / "out").exists()


# -- sigstore keyless, offline ---------------------------------------------------------------------
def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


def _spki(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _fulcio_leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca: x509.Certificate,
    leaf_key: ec.EllipticCurvePrivateKey,
    ct_key: ec.EllipticCurvePrivateKey,
    email: str,
    issuer: str,
) -> x509.Certificate:
    """A Fulcio-style leaf: email SAN, OIDC issuer extension, code signing, and an embedded SCT from ``ct_key``."""
    import struct

    now = datetime.datetime.now(datetime.timezone.utc)
    serial = x509.random_serial_number()
    sct_oid = x509.ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2")

    def build(sct_list: bytes) -> x509.Certificate:
        octets = b"\x04" + (bytes([len(sct_list)]) if len(sct_list) < 128 else b"\x81" + bytes([len(sct_list)]))
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(ca.subject)
            .public_key(leaf_key.public_key())
            .serial_number(serial)
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(minutes=10))
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=True)
            .add_extension(
                x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1"), issuer.encode()),
                critical=False,
            )
            .add_extension(x509.UnrecognizedExtension(sct_oid, octets + sct_list), critical=False)
            .sign(ca_key, hashes.SHA256())
        )

    def sct_list(signature: bytes, timestamp_ms: int) -> bytes:
        log_id = hashlib.sha256(_spki(ct_key)).digest()
        sct = b"\x00" + log_id + struct.pack("!Q", timestamp_ms) + b"\x00\x00"
        sct += b"\x04\x03" + struct.pack("!H", len(signature)) + signature
        entry = struct.pack("!H", len(sct)) + sct
        return struct.pack("!H", len(entry)) + entry

    timestamp_ms = int(now.timestamp() * 1000)
    draft = build(sct_list(b"\x00" * 72, timestamp_ms))
    tbs = draft.tbs_precertificate_bytes
    issuer_key_hash = hashlib.sha256(_spki(ca_key)).digest()
    signed_entry = issuer_key_hash + struct.pack("!I", len(tbs))[1:] + tbs
    data = struct.pack("!BBQH", 0, 0, timestamp_ms, 1) + signed_entry + b"\x00\x00"
    signature = ct_key.sign(data, ec.ECDSA(hashes.SHA256()))
    return build(sct_list(signature, timestamp_ms))


def _trusted_root(
    ca: x509.Certificate, ct_key: ec.EllipticCurvePrivateKey, rekor_key: ec.EllipticCurvePrivateKey
) -> str:
    def log(key: ec.EllipticCurvePrivateKey) -> dict[str, object]:
        return {
            "baseUrl": "https://log.example.com",
            "hashAlgorithm": "SHA2_256",
            "publicKey": {
                "rawBytes": _b64(_spki(key)),
                "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                "validFor": {"start": "2020-01-01T00:00:00Z"},
            },
            "logId": {"keyId": _b64(hashlib.sha256(_spki(key)).digest())},
        }

    return json.dumps(
        {
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": [log(rekor_key)],
            "certificateAuthorities": [
                {
                    "subject": {"organization": "test", "commonName": "test"},
                    "uri": "https://fulcio.example.com",
                    "certChain": {"certificates": [{"rawBytes": _b64(ca.public_bytes(serialization.Encoding.DER))}]},
                    "validFor": {"start": "2020-01-01T00:00:00Z"},
                }
            ],
            "ctlogs": [log(ct_key)],
            "timestampAuthorities": [],
        }
    )


def _log_entry(
    rekor_key: ec.EllipticCurvePrivateKey, leaf: x509.Certificate, envelope: Mapping[str, object], now: int
) -> dict[str, object]:
    """A Rekor dsse 0.0.1 entry, alone in a log of one: body, inclusion proof, signed checkpoint and SET."""
    import base64

    signatures = envelope["signatures"]
    assert isinstance(signatures, list)
    payload = base64.b64decode(str(envelope["payload"]))
    pem = leaf.public_bytes(serialization.Encoding.PEM)
    body = json.dumps(
        {
            "apiVersion": "0.0.1",
            "kind": "dsse",
            "spec": {
                "envelopeHash": {"algorithm": "sha256", "value": sha(json.dumps(envelope).encode())},
                "payloadHash": {"algorithm": "sha256", "value": sha(payload)},
                "signatures": [{"signature": s["sig"], "verifier": _b64(pem)} for s in signatures],
            },
        },
        separators=(",", ":"),
    ).encode()
    log_id = hashlib.sha256(_spki(rekor_key)).digest()
    root_hash = hashlib.sha256(b"\x00" + body).digest()  # a tree of one leaf
    note = f"log.example.com - 1\n1\n{_b64(root_hash)}\n"
    note_signature = rekor_key.sign(note.encode(), ec.ECDSA(hashes.SHA256()))
    checkpoint = f"{note}\n\u2014 log.example.com {_b64(log_id[:4] + note_signature)}\n"
    promise = json.dumps(
        {"body": _b64(body), "integratedTime": now, "logID": log_id.hex(), "logIndex": 0},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    return {
        "logIndex": "0",
        "logId": {"keyId": _b64(log_id)},
        "kindVersion": {"kind": "dsse", "version": "0.0.1"},
        "integratedTime": str(now),
        "inclusionPromise": {"signedEntryTimestamp": _b64(rekor_key.sign(promise, ec.ECDSA(hashes.SHA256())))},
        "inclusionProof": {
            "logIndex": "0",
            "rootHash": _b64(root_hash),
            "treeSize": "1",
            "hashes": [],
            "checkpoint": {"envelope": checkpoint},
        },
        "canonicalizedBody": _b64(body),
    }


def test_sigstore_keyless_checks_identity_and_issuer_offline(tmp_path: Path) -> None:
    """A keyless bundle made here as sigstore makes one (a Fulcio-style CA and leaf with an SCT
    from a CT log, a Rekor dsse entry with its inclusion proof, signed checkpoint and SET) and
    its trusted root, given as ``--trust-root FILE``: nothing is fetched. The right identity and
    issuer verify; a wrong identity, a wrong issuer or a changed file are refused by name."""
    model = write_tree(tmp_path / "model", MODEL)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_pem = _cert("sigstore test CA", ca_key, None, ca_key)
    ca = x509.load_pem_x509_certificate(ca_pem)
    ct_key, rekor_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    leaf = _fulcio_leaf(ca_key, ca, leaf_key, ct_key, "signer@example.com", "https://issuer.example.com")
    # The DSSE envelope of a real model-signing signature by the leaf's key...
    private = tmp_path / "leaf.key"
    private.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    bundle = json.loads(sign_with_key(model, private).read_text())
    # ...in a keyless bundle: the certificate, and one log entry.
    now = int(datetime.datetime.now(datetime.timezone.utc).timestamp())
    bundle = {
        "mediaType": "application/vnd.dev.sigstore.bundle+json;version=0.1",
        "verificationMaterial": {
            "x509CertificateChain": {
                "certificates": [{"rawBytes": _b64(leaf.public_bytes(serialization.Encoding.DER))}]
            },
            "tlogEntries": [_log_entry(rekor_key, leaf, bundle["dsseEnvelope"], now)],
        },
        "dsseEnvelope": bundle["dsseEnvelope"],
    }
    (model / "model.sig").write_text(json.dumps(bundle))
    root = tmp_path / "trusted_root.json"
    root.write_text(_trusted_root(ca, ct_key, rekor_key))

    def run(identity: str, issuer: str, out: str) -> tuple[int, str]:
        args = ["--signer-identity", identity, "--signer-issuer", issuer, "--trust-root", str(root)]
        result = run_cli([*args, str(model), str(tmp_path / out)])
        lines = error_lines(result.stderr)
        assert len(lines) == 1, result.stderr
        assert everything_in(tmp_path / out) == []
        return result.returncode, lines[0]

    code, line = run("someone-else@example.com", "https://issuer.example.com", "wrong-identity")
    assert code == 1 and "signature check (sigstore) failed" in line and "someone-else@example.com" in line
    code, line = run("signer@example.com", "https://other-issuer.example.com", "wrong-issuer")
    assert code == 1 and "signature check (sigstore) failed" in line and "other-issuer.example.com" in line
    right = ["--signer-identity", "signer@example.com", "--signer-issuer", "https://issuer.example.com"]
    ok = run_cli([*right, "--trust-root", str(root), str(model), str(tmp_path / "ok")])
    assert ok.returncode == 0, ok.stderr
    assert "signature verified (sigstore): model.sig" in ok.stderr
    assert files_in(tmp_path / "ok") == files_in(model)
    (model / "config.json").write_bytes(b'{"hidden": 9}\n')
    code, line = run("signer@example.com", "https://issuer.example.com", "tampered")
    assert code == 1 and "signature check (sigstore) failed: content differs from the signed model: config.json" in line
