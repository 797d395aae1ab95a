"""Proof that the fake WebHDFS answers the real ``hdfs`` client (HdfsCLI) and raw HTTP as Hadoop does."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import hdfs  # type: ignore[import-untyped]
import pytest
import requests
import urllib3
from hdfs.util import HdfsError  # type: ignore[import-untyped]

from tests.servers.fake_webhdfs import FakeWebHDFS

FILE_STATUS_KEYS = [
    "accessTime", "blockSize", "childrenNum", "fileId", "group", "length", "modificationTime",
    "owner", "pathSuffix", "permission", "replication", "storagePolicy", "type",
]  # fmt: skip
MODEL = bytes(range(256)) * 40  # 10240 bytes


def _seed(server: FakeWebHDFS) -> None:
    server.put("/models/iris/model.joblib", MODEL)
    server.put("/models/iris/config.json", b'{"a": 1}')
    server.put("/models/iris/sub/deep/weights.bin", b"w" * 3000)
    server.put("/models/iris/empty.txt", b"")
    server.mkdir("/empty")


def _client(server: FakeWebHDFS, user: str = "alice") -> hdfs.InsecureClient:
    return hdfs.InsecureClient(server.url, user=user)


def _read(client: hdfs.Client, path: str, **kwargs: Any) -> bytes:
    """The whole (ranged) read as bytes, through the client's OPEN + redirect."""
    with client.read(path, **kwargs) as reader:
        data: bytes = reader.read()
    return data


def test_status_and_list_have_hadoop_shapes(fake_webhdfs: FakeWebHDFS) -> None:
    _seed(fake_webhdfs)
    client = _client(fake_webhdfs)

    file_status = client.status("/models/iris/model.joblib")
    assert sorted(file_status) == FILE_STATUS_KEYS
    assert file_status["type"] == "FILE"
    assert file_status["length"] == len(MODEL)
    assert file_status["pathSuffix"] == ""
    assert file_status["permission"] == "644"
    assert (file_status["owner"], file_status["group"]) == ("hdfs", "supergroup")
    assert file_status["blockSize"] == 128 * 1024 * 1024 and file_status["replication"] == 1

    dir_status = client.status("/models/iris")
    assert dir_status["type"] == "DIRECTORY"
    assert (dir_status["length"], dir_status["blockSize"], dir_status["replication"]) == (0, 0, 0)
    assert dir_status["childrenNum"] == 4
    assert dir_status["permission"] == "755"

    assert client.list("/models/iris") == ["config.json", "empty.txt", "model.joblib", "sub"]
    listed = dict(client.list("/models/iris", status=True))
    assert sorted(listed["sub"]) == FILE_STATUS_KEYS
    assert listed["model.joblib"]["fileId"] == file_status["fileId"]
    assert client.list("/empty") == []
    with pytest.raises(HdfsError, match="is not a directory"):
        client.list("/models/iris/model.joblib")  # LISTSTATUS of a file lists the file itself


def test_walk_read_ranges_and_download(fake_webhdfs: FakeWebHDFS, tmp_path: Path) -> None:
    _seed(fake_webhdfs)
    client = _client(fake_webhdfs)

    walked = {path: (sorted(dirs), sorted(files)) for path, dirs, files in client.walk("/models")}
    assert walked == {
        "/models": (["iris"], []),
        "/models/iris": (["sub"], ["config.json", "empty.txt", "model.joblib"]),
        "/models/iris/sub": (["deep"], []),
        "/models/iris/sub/deep": ([], ["weights.bin"]),
    }

    with client.read("/models/iris/model.joblib") as reader:
        assert reader.read() == MODEL
    with client.read("/models/iris/model.joblib", offset=1000, length=300, buffer_size=128) as reader:
        assert reader.read() == MODEL[1000:1300]
    with client.read("/models/iris/model.joblib", offset=10000, length=5000) as reader:
        assert reader.read() == MODEL[10000:]  # length past the end is clipped
    with client.read("/models/iris/empty.txt") as reader:
        assert reader.read() == b""
    ranged = fake_webhdfs.opens("/models/iris/model.joblib")[1]
    assert (ranged.query["offset"], ranged.query["length"], ranged.query["buffersize"]) == (
        "1000",
        "300",
        "128",
    )
    assert ranged.query["user.name"] == "alice"

    fake_webhdfs.reset_counters()
    client.download("/models/iris", str(tmp_path), n_threads=3)
    root = tmp_path / "iris"
    assert (root / "model.joblib").read_bytes() == MODEL
    assert (root / "config.json").read_bytes() == b'{"a": 1}'
    assert (root / "sub/deep/weights.bin").read_bytes() == b"w" * 3000
    assert (root / "empty.txt").read_bytes() == b""
    assert fake_webhdfs.bytes_served == len(MODEL) + 8 + 3000
    assert fake_webhdfs.bytes_served_by_path["/models/iris/model.joblib"] == len(MODEL)


def test_missing_paths_and_bad_ranges_are_hdfs_errors(fake_webhdfs: FakeWebHDFS) -> None:
    _seed(fake_webhdfs)
    client = _client(fake_webhdfs)

    with pytest.raises(HdfsError, match="File does not exist: /nope") as status_error:
        client.status("/nope")
    assert status_error.value.exception == "FileNotFoundException"
    assert client.status("/nope", strict=False) is None
    with pytest.raises(HdfsError, match=r"File /nope does not exist\."):
        client.list("/nope")
    with pytest.raises(HdfsError, match=r"File /nope not found\."), client.read("/nope"):
        pass
    with pytest.raises(HdfsError, match=r"Offset=99999 out of the range \[0, 10240\); OPEN") as offset_error:
        _read(client, "/models/iris/model.joblib", offset=99999)
    assert offset_error.value.exception == "IOException"
    with pytest.raises(HdfsError, match="Path is not a file: /models/iris"), client.read("/models/iris"):
        pass


def test_content_summary_and_home_directory(fake_webhdfs: FakeWebHDFS) -> None:
    _seed(fake_webhdfs)
    client = hdfs.InsecureClient(fake_webhdfs.url, user="alice", root="models")
    summary = client.content("/models/iris")
    assert summary == {
        "directoryCount": 3, "ecPolicy": "", "fileCount": 4, "length": len(MODEL) + 8 + 3000,
        "quota": -1, "spaceConsumed": len(MODEL) + 8 + 3000, "spaceQuota": -1, "typeQuota": {},
    }  # fmt: skip
    assert client.resolve("iris") == "/user/alice/models/iris"  # relative root: GETHOMEDIRECTORY


def test_raw_protocol_redirect_headers_and_errors(fake_webhdfs: FakeWebHDFS) -> None:
    _seed(fake_webhdfs)
    base = f"{fake_webhdfs.url}/webhdfs/v1"

    redirect = requests.get(
        f"{base}/models/iris/model.joblib",
        params={"op": "open", "user.name": "bob", "offset": "5", "length": "10"},
        allow_redirects=False,
    )
    assert redirect.status_code == 307
    assert redirect.headers["Content-Length"] == "0"
    location = urlsplit(redirect.headers["Location"])
    assert f"{location.scheme}://{location.netloc}" == fake_webhdfs.datanode_url
    assert location.path == "/webhdfs/v1/models/iris/model.joblib"
    assert location.query.startswith("op=OPEN&user.name=bob&namenoderpcaddress=")
    assert parse_qs(location.query)["offset"] == ["5"] and parse_qs(location.query)["length"] == ["10"]

    data = requests.get(redirect.headers["Location"])
    assert data.content == MODEL[5:15]
    assert data.headers["Content-Type"] == "application/octet-stream"
    assert data.headers["Connection"] == "close"
    assert data.headers["Content-Length"] == "10"

    noredirect = requests.get(f"{base}/models/iris/model.joblib?op=OPEN&noredirect=true")
    assert noredirect.json()["Location"].startswith(fake_webhdfs.datanode_url)
    assert "user.name" not in noredirect.json()["Location"]  # anonymous stays anonymous (dr.who)

    missing = requests.get(f"{base}/nope?op=GETFILESTATUS")
    assert missing.status_code == 404
    assert missing.headers["Content-Type"] == "application/json"
    assert missing.text == (
        '{"RemoteException":{"exception":"FileNotFoundException",'
        '"javaClassName":"java.io.FileNotFoundException","message":"File does not exist: /nope"}}'
    )
    bad_op = requests.get(f"{base}/?op=FROB")
    assert bad_op.status_code == 400
    assert bad_op.json()["RemoteException"]["message"] == (
        'Invalid value for webhdfs parameter "op": '
        "No enum constant org.apache.hadoop.hdfs.web.resources.GetOpParam.Op.FROB"
    )
    no_op = requests.get(f"{base}/")
    assert (no_op.status_code, no_op.json()["RemoteException"]["exception"]) == (
        400,
        "UnsupportedOperationException",
    )
    negative = requests.get(f"{base}/models/iris/model.joblib?op=OPEN&offset=-1")
    assert negative.status_code == 400
    assert "Invalid parameter range: offset = -1 < 0" in negative.json()["RemoteException"]["message"]
    eof = requests.get(f"{fake_webhdfs.datanode_url}/webhdfs/v1/models/iris/empty.txt?op=OPEN"
                       "&namenoderpcaddress=x&offset=3")  # fmt: skip
    assert (eof.status_code, eof.json()["RemoteException"]["exception"]) == (403, "EOFException")


def test_liststatus_batch_pages_after_start_after(make_fake_webhdfs: Callable[..., FakeWebHDFS]) -> None:
    server = make_fake_webhdfs(ls_limit=2)
    for name in ("d", "a", "c", "b", "e"):
        server.put(f"/many/{name}", name.encode())
    url = f"{server.url}/webhdfs/v1/many"
    first = requests.get(url, params={"op": "LISTSTATUS_BATCH"}).json()["DirectoryListing"]
    assert [s["pathSuffix"] for s in first["partialListing"]["FileStatuses"]["FileStatus"]] == ["a", "b"]
    assert first["remainingEntries"] == 3
    last = requests.get(url, params={"op": "LISTSTATUS_BATCH", "startAfter": "d"}).json()["DirectoryListing"]
    assert [s["pathSuffix"] for s in last["partialListing"]["FileStatuses"]["FileStatus"]] == ["e"]
    assert last["remainingEntries"] == 0
    # LISTSTATUS is never paged: the namenode streams every entry whatever dfs.ls.limit says.
    assert hdfs.InsecureClient(server.url, user="x").list("/many") == ["a", "b", "c", "d", "e"]


def test_permissions_proxy_users_and_authentication(make_fake_webhdfs: Callable[..., FakeWebHDFS]) -> None:
    server = make_fake_webhdfs(proxy_users={"svc": ["alice"]})
    server.put("/private/model.bin", b"secret", owner="alice", permission=0o600)
    server.chmod("/private", 0o700, owner="alice")

    with pytest.raises(HdfsError, match='Permission denied: user=bob, access=EXECUTE, inode="/private"'):
        _client(server, "bob").status("/private/model.bin")
    assert _read(_client(server, "alice"), "/private/model.bin") == b"secret"

    proxied = hdfs.InsecureClient(server.url, user="svc", proxy="alice")
    assert proxied.list("/private") == ["model.bin"]
    assert server.requests[-1].query["doas"] == "alice"
    with pytest.raises(HdfsError, match="User: svc is not allowed to impersonate bob") as refused:
        hdfs.InsecureClient(server.url, user="svc", proxy="bob").status("/")
    assert refused.value.exception == "SecurityException"
    # KServe's hdfs.Client sends no user.name: the request runs as dr.who, who may not proxy.
    with pytest.raises(HdfsError, match=r"User: dr\.who is not allowed to impersonate alice"):
        hdfs.Client(server.url, proxy="alice").status("/")

    server.anonymous_allowed = False
    anonymous = requests.get(f"{server.url}/webhdfs/v1/?op=GETFILESTATUS")
    assert anonymous.status_code == 403 and "Anonymous requests are disallowed" in anonymous.text
    with pytest.raises(HdfsError, match="Anonymous requests are disallowed"):
        hdfs.Client(server.url).status("/")

    server.required_headers = {"Authorization": "Bearer t0k3n"}
    unauthorized = requests.get(f"{server.url}/webhdfs/v1/?op=GETFILESTATUS&user.name=alice")
    assert unauthorized.status_code == 401 and unauthorized.headers["WWW-Authenticate"] == "Negotiate"
    with pytest.raises(HdfsError, match="Authentication failure"):
        _client(server, "alice").status("/")
    session = requests.Session()
    session.headers["Authorization"] = "Bearer t0k3n"
    with_header = hdfs.InsecureClient(server.url, user="alice", session=session)
    assert _read(with_header, "/private/model.bin") == b"secret"  # the datanode does not need the header


def test_standby_namenode_fails_over(make_fake_webhdfs: Callable[..., FakeWebHDFS]) -> None:
    standby = make_fake_webhdfs(standby=True)
    active = make_fake_webhdfs()
    active.put("/m/f", b"data")
    answer = requests.get(f"{standby.url}/webhdfs/v1/m/f?op=GETFILESTATUS")
    assert answer.status_code == 403
    assert answer.json()["RemoteException"]["exception"] == "StandbyException"
    client = hdfs.InsecureClient(f"{standby.url};{active.url}", user="alice")
    assert client.status("/m/f")["length"] == 4


def test_faults_cut_stall_replace_and_errors(fake_webhdfs: FakeWebHDFS) -> None:
    _seed(fake_webhdfs)
    client = _client(fake_webhdfs)
    path = "/models/iris/model.joblib"

    fake_webhdfs.cut(path, after=1000)
    with pytest.raises(urllib3.exceptions.ProtocolError, match=r"IncompleteRead\(1000 bytes read"):
        _read(client, path)  # the client hands out the raw urllib3 stream
    assert fake_webhdfs.bytes_served_by_path[path] == 1000

    fake_webhdfs.stall(path, after=10, seconds=30)
    slow = hdfs.InsecureClient(fake_webhdfs.url, user="alice", timeout=0.3)
    with pytest.raises(requests.exceptions.ConnectionError), slow.read(path, chunk_size=4096) as chunks:
        b"".join(chunks)

    before = client.status(path)
    fake_webhdfs.replace_during_read(path, b"new content", after=100)
    with client.read(path) as reader:
        assert reader.read() == MODEL  # the response in flight keeps the old bytes
    after = client.status(path)
    assert after["length"] == 11
    assert after["modificationTime"] > before["modificationTime"]
    assert after["fileId"] != before["fileId"]
    with client.read(path) as reader:
        assert reader.read() == b"new content"

    fake_webhdfs.fail(403, "RetriableException", "Namenode is in startup mode", op="GETFILESTATUS")
    with pytest.raises(HdfsError, match="startup mode"):
        client.status(path)
    assert client.status(path)["length"] == 11  # one-shot


@pytest.mark.parametrize("need_client_cert", [False, True])
def test_https_with_ca_and_client_certificates(
    make_fake_webhdfs: Callable[..., FakeWebHDFS],
    need_client_cert: bool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override a Session's own ``verify`` (psf/requests
    # #3829): with them set, as they are on this machine, ``session.verify = CA`` is silently ignored.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    server = make_fake_webhdfs(tls=True, require_client_cert=need_client_cert)
    server.put("/m/model.bin", MODEL)
    assert server.url.startswith("https://") and server.ca_path is not None

    session = requests.Session()
    session.verify = os.fspath(server.ca_path)
    if need_client_cert:
        with pytest.raises(requests.exceptions.SSLError):
            hdfs.Client(server.url, session=session).status("/m")
        cert, key = server.client_cert_files()
        session.cert = (os.fspath(cert), os.fspath(key))
    client = hdfs.Client(server.url, session=session)
    assert client.status("/m/model.bin")["length"] == len(MODEL)
    assert _read(client, "/m/model.bin", offset=7, length=9) == MODEL[7:16]
    assert server.opens()[0].query["offset"] == "7"
    client.download("/m", str(tmp_path))
    assert (tmp_path / "m/model.bin").read_bytes() == MODEL
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{server.url}/webhdfs/v1/?op=GETFILESTATUS")  # not trusted without the CA
