"""Bad and hostile input: malformed URIs for every scheme, hostile keys on a
real S3 server, and secrets that must never reach any output."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from tests.cli import run_cli, tree


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://", "expected s3://BUCKET[/PATH]"),
        ("s3:///models/iris", "expected s3://BUCKET[/PATH]"),
        ("s3://Bad_Bucket!/k", "is not a valid bucket name"),
        ("gs://", "expected gs://BUCKET[/PATH]"),
        ("gs:///obj", "expected gs://BUCKET[/PATH]"),
        ("hf://", "expected hf://[datasets/]OWNER/REPO"),
        ("hf://a b/c", "expected hf://[datasets/]OWNER/REPO"),
        ("model-registry://", "expected model-registry://[HOST[:PORT]/]MODEL[/VERSION]"),
        ("model-registry://host:99999/iris", "invalid registry port"),
        ("webhdfs://namenode:badport/models", "invalid namenode port"),
        ("https://acct.blob.core.windows.net/", "names no container"),
        ("https://acct.file.core.windows.net/", "names no container"),
        ("http://", "expected http(s)://HOST[:PORT]/PATH/FILE"),
        ("http://example.com:99999/m.bin", "invalid port"),
        ("https://example.com/models/", "no file name"),
        ("file://", "names no path"),
        ("ftp://host/model.bin", "unknown URI scheme 'ftp://' in ftp://host/model.bin"),
        ("model.bin", "model.bin: no such file or directory in "),
    ],
)
def test_malformed_uris_are_usage_errors(tmp_path: Path, uri: str, expected: str) -> None:
    result = run_cli([uri, str(tmp_path / "out")], timeout=60)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert tree(tmp_path / "out") == {}


# -- hostile keys on a real S3 server (moto stores keys verbatim, as AWS does) ---------
@pytest.mark.parametrize(
    "keys",
    [
        pytest.param(["model/ok.bin", "model/../../escape.txt"], id="dotdot"),
        pytest.param(["model/ok.bin", "model//etc/passwd"], id="absolute-after-prefix"),
        pytest.param(["model/ok.bin", "model/a\\..\\..\\escape.txt"], id="backslashes"),
        pytest.param(["model/ok.bin", "model/" + "n" * 300], id="name-too-long"),
        pytest.param(["model/a", "model/a/b"], id="file-and-directory"),
    ],
)
def test_hostile_keys_on_s3_write_nothing_outside(tmp_path: Path, moto_s3: object, keys: list[str]) -> None:
    server = moto_s3
    bucket = server.new_bucket("hostile")  # type: ignore[attr-defined]
    for key in keys:
        server.put(bucket, key, b"evil" if key != "model/ok.bin" else b"ok")  # type: ignore[attr-defined]
    dest = tmp_path / "a" / "dest"
    result = run_cli([f"s3://{bucket}/model", str(dest)], server.env())  # type: ignore[attr-defined]
    assert result.returncode == 1, result.stderr
    assert "object key" in result.stderr or "needs 'a' to be a directory" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["dest"]
    assert not any(p.read_bytes() == b"evil" for p in tmp_path.rglob("*") if p.is_file())


def test_case_differing_names_are_both_kept(tmp_path: Path, seaweedfs: object) -> None:
    server = seaweedfs
    bucket = server.new_bucket("case")  # type: ignore[attr-defined]
    server.put(bucket, "model/Weights.bin", b"upper")  # type: ignore[attr-defined]
    server.put(bucket, "model/weights.bin", b"lower")  # type: ignore[attr-defined]
    result = run_cli([f"s3://{bucket}/model", str(tmp_path / "out")], server.env())  # type: ignore[attr-defined]
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path / "out") == {"Weights.bin": b"upper", "weights.bin": b"lower"}


# -- secrets never appear, at any log level, in success or failure -------------------
def _everything(result: object, termination: Path) -> str:
    text = result.stdout + result.stderr  # type: ignore[attr-defined]
    return text + (termination.read_text() if termination.exists() else "")


@pytest.mark.parametrize("level", ["-v", "--quiet"])
def test_s3_secrets_never_appear(tmp_path: Path, seaweedfs: object, level: str) -> None:
    server = seaweedfs
    bucket = server.new_bucket("sec")  # type: ignore[attr-defined]
    server.put(bucket, "model/w.bin", b"w")  # type: ignore[attr-defined]
    termination = tmp_path / "termination"
    env = {**server.env(), "STORAGE_INITIALIZER_TERMINATION_LOG": str(termination)}  # type: ignore[attr-defined]
    secret = env["AWS_SECRET_ACCESS_KEY"]
    ok = run_cli([level, f"s3://{bucket}/model", str(tmp_path / "ok")], env)
    assert ok.returncode == 0, ok.stderr
    wrong = {**env, "AWS_SECRET_ACCESS_KEY": "WrongSecretValue/abc123456", "AWS_SESSION_TOKEN": "SessionTok3nValue=="}
    bad = run_cli([level, f"s3://{bucket}/model", str(tmp_path / "bad")], wrong)
    assert bad.returncode == 1
    for text in (_everything(ok, termination), _everything(bad, termination)):
        for value in (secret, "WrongSecretValue/abc123456", "SessionTok3nValue=="):
            assert value not in text
    storage_config = json.dumps(
        {
            "type": "s3",
            "access_key_id": env["AWS_ACCESS_KEY_ID"],
            "secret_access_key": "SpecSecret-987654",
            "endpoint_url": env["AWS_ENDPOINT_URL"],
        }
    )
    spec = run_cli(
        [level, f"s3://{bucket}/model", str(tmp_path / "spec")],
        {"STORAGE_CONFIG": storage_config, "AWS_DEFAULT_REGION": "us-east-1"},
    )
    assert spec.returncode == 1
    assert "SpecSecret-987654" not in _everything(spec, termination)


def test_azure_key_and_sas_never_appear(tmp_path: Path, azurite: object) -> None:
    server = azurite
    termination = tmp_path / "termination"
    key = server.account_key  # type: ignore[attr-defined]
    wrong_key = base64.b64encode(b"definitely-not-the-key-0123456789").decode()
    env = {
        "AZURE_STORAGE_CONNECTION_STRING": server.connection_string.replace(key, wrong_key),  # type: ignore[attr-defined]
        "STORAGE_INITIALIZER_TERMINATION_LOG": str(termination),
        "STORAGE_INITIALIZER_RETRIES": "0",
    }
    account = server.account_name  # type: ignore[attr-defined]
    sas = "sv=2023-01-03&ss=b&srt=sco&sp=rl&se=2030-01-01T00:00:00Z&sig=SasSignatureValue%2Babc%3D"
    for uri in (
        f"https://{account}.blob.core.windows.net/missing/model",
        f"https://{account}.blob.core.windows.net/missing/model?{sas}",
    ):
        result = run_cli(["-v", uri, str(tmp_path / "out")], env)
        assert result.returncode != 0
        text = _everything(result, termination)
        for value in (wrong_key, "SasSignatureValue", key):
            assert value not in text, value


def test_hf_and_registry_tokens_never_appear(tmp_path: Path, fake_hf_hub: object, fake_model_registry: object) -> None:
    hub = fake_hf_hub
    hub.add_repo("acme/private-model", {"config.json": b"{}"}, private=True)  # type: ignore[attr-defined]
    termination = tmp_path / "termination"
    env = {
        "HF_ENDPOINT": hub.url,
        "HF_TOKEN": hub.token,
        "HF_HUB_DISABLE_TELEMETRY": "1",  # type: ignore[attr-defined]
        "STORAGE_INITIALIZER_TERMINATION_LOG": str(termination),
    }
    ok = run_cli(["-v", "hf://acme/private-model", str(tmp_path / "ok")], env)
    assert ok.returncode == 0, ok.stderr
    bad = run_cli(
        ["-v", "hf://acme/private-model", str(tmp_path / "bad")], {**env, "HF_TOKEN": "hf_WrongTokenValue123"}
    )
    assert bad.returncode == 1
    for text in (_everything(ok, termination), _everything(bad, termination)):
        assert hub.token not in text and "hf_WrongTokenValue123" not in text  # type: ignore[attr-defined]
    registry = fake_model_registry
    registry.require_token = "registry-secret-token-42"  # type: ignore[attr-defined]
    denied = run_cli(
        ["-v", "model-registry://iris/v1", str(tmp_path / "reg")],
        {
            **registry.env(),
            "MODEL_REGISTRY_TOKEN": "wrong-registry-token-77",  # type: ignore[attr-defined]
            "STORAGE_INITIALIZER_TERMINATION_LOG": str(termination),
        },
    )
    assert denied.returncode != 0
    assert "wrong-registry-token-77" not in _everything(denied, termination)
