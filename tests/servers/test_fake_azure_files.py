"""Proof that the Azure Files fake answers the real ``azure-storage-file-share`` SDK.

Everything but the raw-HTTP checks goes through ShareServiceClient /
ShareDirectoryClient / ShareFileClient pointed at the fake with a real account
key or SAS, so a fake that parses or signs differently from the service fails
here.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import timedelta

import pytest
import requests
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.storage.fileshare import ShareFileClient, ShareServiceClient, generate_file_sas

from tests.servers.fake_azure_files import DEFAULT_KEY, FakeAzureFiles


def _service(fake: FakeAzureFiles, credential: object = None) -> ShareServiceClient:
    return ShareServiceClient(fake.endpoint, credential=credential if credential is not None else fake.key)


def _sas_get(fake: FakeAzureFiles, path: str, query: str = "", **headers: str) -> requests.Response:
    sas = fake.account_sas()
    sep = "&" if query else ""
    return requests.get(f"{fake.endpoint}/{path}?{query}{sep}{sas}", headers=headers, timeout=5)


def test_listing_pages_with_markers_and_prefix(fake_azure_files: FakeAzureFiles) -> None:
    share = fake_azure_files.create_share()
    names = ["a.bin", "B.txt", "c d.json", "model-v2.bin", "zü.bin"]
    for name in names:
        fake_azure_files.put(share, f"model/{name}", name.encode())
    fake_azure_files.mkdir(share, "model/sub/deeper")
    fake_azure_files.put(share, "model/empty", b"")

    directory = _service(fake_azure_files).get_share_client(share).get_directory_client("model")
    pages = list(directory.list_directories_and_files(results_per_page=3).by_page())
    assert [len(list(page)) for page in pages] == [3, 3, 1]
    listed = {item.name: item for item in directory.list_directories_and_files(results_per_page=2)}
    assert sorted(listed) == sorted([*names, "sub", "empty"])
    assert listed["sub"].is_directory and not listed["a.bin"].is_directory
    assert listed["c d.json"].size == len(b"c d.json") and listed["empty"].size == 0
    markers = [r.query.get("marker") for r in fake_azure_files.requests if r.query.get("comp") == "list"]
    assert markers[0] is None and all(m and m.startswith("2!") for m in markers[1:3])

    prefixed = [i.name for i in directory.list_directories_and_files(name_starts_with="model")]
    assert prefixed == ["model-v2.bin"]


def test_listing_include_options_and_extended_info(fake_azure_files: FakeAzureFiles) -> None:
    share = fake_azure_files.create_share()
    etag = fake_azure_files.put(share, "f.bin", b"x" * 10)
    fake_azure_files.mkdir(share, "d")
    root = _service(fake_azure_files).get_share_client(share).get_directory_client("")
    items = {
        i.name: i
        for i in root.list_directories_and_files(
            include=["timestamps", "Etag", "Attributes", "PermissionKey"], include_extended_info=True
        )
    }
    assert items["f.bin"].etag == etag.strip('"') and items["f.bin"].file_id
    assert items["f.bin"].last_modified is not None and items["d"].file_attributes == "Directory"
    plain = {i.name: i for i in root.list_directories_and_files()}
    assert plain["f.bin"].etag is None and plain["f.bin"].size == 10


def test_xml_invalid_names_are_encoded(fake_azure_files: FakeAzureFiles) -> None:
    share = fake_azure_files.create_share()
    fake_azure_files.put_unchecked(share, "d", "bad\x01name", b"1")
    directory = _service(fake_azure_files).get_share_client(share).get_directory_client("d")
    assert [i.name for i in directory.list_directories_and_files()] == ["bad\x01name"]


def test_download_full_ranged_empty_and_properties(fake_azure_files: FakeAzureFiles) -> None:
    share = fake_azure_files.create_share()
    data = bytes(range(256)) * 40
    etag = fake_azure_files.put(share, "dir/sub/file.bin", data)
    fake_azure_files.put(share, "dir/empty.bin", b"")
    share_client = _service(fake_azure_files).get_share_client(share)
    file_client = share_client.get_file_client("dir/sub/file.bin")

    assert file_client.download_file().readall() == data
    assert file_client.download_file(offset=100, length=1000).readall() == data[100:1100]
    assert file_client.download_file(offset=10_000).readall() == data[10_000:]
    # validate_content asks for x-ms-range-get-content-md5 and checks each range's MD5.
    assert file_client.download_file(offset=5, length=3000, validate_content=True).readall() == data[5:3005]
    assert share_client.get_file_client("dir/empty.bin").download_file().readall() == b""
    # Names are case-insensitive, as on SMB.
    assert share_client.get_file_client("DIR/SUB/FILE.BIN").download_file().readall() == data

    props = file_client.get_file_properties()
    assert props.size == len(data) and props.etag == etag
    assert bytes(props.content_settings.content_md5) == hashlib.md5(data).digest()
    assert share_client.get_share_properties().quota == 5120
    assert share_client.get_directory_client("dir").get_directory_properties().etag

    served = fake_azure_files.bytes_served
    file_client.download_file(offset=0, length=7).readall()
    assert fake_azure_files.bytes_served - served == 7


def test_repeated_content_serves_exact_bytes(fake_azure_files: FakeAzureFiles) -> None:
    share = fake_azure_files.create_share()
    chunk = bytes(range(251))
    digest = fake_azure_files.put_repeated(share, "big.bin", chunk, 1000)
    data = chunk * 1000
    client = _service(fake_azure_files).get_share_client(share).get_file_client("big.bin")
    assert hashlib.sha256(client.download_file().readall()).hexdigest() == digest
    assert client.download_file(offset=250, length=600).readall() == data[250:850]
    assert bytes(client.get_file_properties().content_settings.content_md5) == hashlib.md5(data).digest()


def test_sdk_chunked_download_detects_replacement(fake_azure_files: FakeAzureFiles) -> None:
    share = fake_azure_files.create_share()
    fake_azure_files.put(share, "big.bin", b"a" * 4096)
    fake_azure_files.replace_during_download(f"{share}/big.bin", b"b" * 4096, after_bytes=512)
    client = ShareFileClient(
        fake_azure_files.endpoint,
        share,
        "big.bin",
        credential=fake_azure_files.key,
        max_single_get_size=1024,
        max_chunk_get_size=1024,
    )
    with pytest.raises(ResourceModifiedError):
        client.download_file().readall()


def test_missing_share_parent_and_file(fake_azure_files: FakeAzureFiles) -> None:
    share = fake_azure_files.create_share()
    fake_azure_files.put(share, "dir/f", b"1")
    service = _service(fake_azure_files)
    cases = [
        (service.get_share_client("nosuchshare").get_directory_client(""), "ShareNotFound"),
        (service.get_share_client(share).get_directory_client("nodir"), "ResourceNotFound"),
        (service.get_share_client(share).get_directory_client("nodir/deeper"), "ParentNotFound"),
    ]
    for directory, code in cases:
        with pytest.raises(ResourceNotFoundError) as info:
            list(directory.list_directories_and_files())
        assert info.value.error_code == code
    with pytest.raises(ResourceNotFoundError) as info:
        service.get_share_client(share).get_file_client("dir/nofile").download_file()
    assert info.value.error_code == "ResourceNotFound"
    with pytest.raises(ResourceNotFoundError) as info:  # HEAD: code from x-ms-error-code only
        service.get_share_client(share).get_file_client("dir/nofile").get_file_properties()
    assert info.value.error_code == "ResourceNotFound"


def test_wrong_key_is_authentication_failed(fake_azure_files: FakeAzureFiles) -> None:
    share = fake_azure_files.create_share()
    wrong = base64.b64encode(b"w" * 64).decode()
    assert wrong != DEFAULT_KEY
    directory = _service(fake_azure_files, wrong).get_share_client(share).get_directory_client("")
    with pytest.raises(ClientAuthenticationError) as info:
        list(directory.list_directories_and_files())
    assert info.value.error_code == "AuthenticationFailed"
    assert info.value.status_code == 403


def test_sas_tokens_are_verified(fake_azure_files: FakeAzureFiles) -> None:
    fake = fake_azure_files
    share = fake.create_share()
    other = fake.create_share()
    fake.put(share, "m/f.bin", b"payload")

    for sas in (fake.account_sas(), fake.share_sas(share)):
        share_client = _service(fake, sas).get_share_client(share)
        assert [i.name for i in share_client.get_directory_client("m").list_directories_and_files()] == ["f.bin"]
        assert share_client.get_file_client("m/f.bin").download_file().readall() == b"payload"
    file_sas = generate_file_sas(
        fake.account, share, ["m", "f.bin"], fake.key, permission="r", expiry=_in(timedelta(minutes=5))
    )
    assert ShareFileClient(fake.endpoint, share, "m/f.bin", credential=file_sas).download_file().readall()

    denied = [
        (_service(fake, fake.share_sas(other)).get_share_client(share), "AuthenticationFailed"),
        (
            _service(fake, fake.account_sas(expiry=timedelta(minutes=-1))).get_share_client(share),
            "AuthenticationFailed",
        ),
        (
            _service(fake, fake.account_sas(permission="r")).get_share_client(share),
            "AuthorizationPermissionMismatch",
        ),
    ]
    for share_client, code in denied:
        with pytest.raises(HttpResponseError) as info:
            list(share_client.get_directory_client("m").list_directories_and_files())
        assert info.value.status_code == 403 and info.value.error_code == code
    tampered = fake.account_sas().replace("sp=rl", "sp=rwdl")
    with pytest.raises(ClientAuthenticationError):
        _service(fake, tampered).get_share_client(share).get_file_client("m/f.bin").download_file()


def test_anonymous_is_refused_unless_allowed(fake_azure_files: FakeAzureFiles) -> None:
    share = fake_azure_files.create_share()
    fake_azure_files.put(share, "f", b"1")
    response = requests.get(f"{fake_azure_files.endpoint}/{share}/f", timeout=5)
    assert response.status_code == 401
    assert response.headers["x-ms-error-code"] == "NoAuthenticationInformation"
    assert "<Code>NoAuthenticationInformation</Code>" in response.text
    # The SDK refuses to build a file client without a key or SAS, so the
    # anonymous switch is checked over raw HTTP.
    with pytest.raises(ValueError, match="shared key or SAS"):
        ShareFileClient(fake_azure_files.endpoint, share, "f")
    fake_azure_files.allow_anonymous = True
    assert requests.get(f"{fake_azure_files.endpoint}/{share}/f", timeout=5).content == b"1"


def test_firewall_denial_is_authorization_failure(fake_azure_files: FakeAzureFiles) -> None:
    share = fake_azure_files.create_share()
    fake_azure_files.deny_all = True
    with pytest.raises(HttpResponseError) as info:
        list(_service(fake_azure_files).get_share_client(share).list_directories_and_files())
    assert info.value.status_code == 403 and info.value.error_code == "AuthorizationFailure"


def test_raw_http_range_md5_and_conditional_headers(fake_azure_files: FakeAzureFiles) -> None:
    fake = fake_azure_files
    share = fake.create_share()
    data = b"0123456789" * 100
    etag = fake.put(share, "f.bin", data)
    whole_md5 = base64.b64encode(hashlib.md5(data).digest()).decode()

    full = _sas_get(fake, f"{share}/f.bin")
    assert full.status_code == 200 and full.content == data
    assert full.headers["Content-MD5"] == whole_md5 and full.headers["ETag"] == etag

    ranged = _sas_get(fake, f"{share}/f.bin", Range="bytes=0-1", **{"x-ms-range": "bytes=10-19"})
    assert ranged.status_code == 206 and ranged.content == data[10:20]
    assert ranged.headers["Content-Range"] == "bytes 10-19/1000"
    assert ranged.headers["x-ms-content-md5"] == whole_md5 and "Content-MD5" not in ranged.headers

    with_md5 = _sas_get(fake, f"{share}/f.bin", **{"x-ms-range": "bytes=990-", "x-ms-range-get-content-md5": "true"})
    assert with_md5.content == data[990:]
    assert with_md5.headers["Content-MD5"] == base64.b64encode(hashlib.md5(data[990:]).digest()).decode()

    past_end = _sas_get(fake, f"{share}/f.bin", **{"x-ms-range": "bytes=1000-"})
    assert past_end.status_code == 416 and past_end.headers["Content-Range"] == "bytes */1000"
    assert past_end.headers["x-ms-error-code"] == "InvalidRange"

    conditional = _sas_get(fake, f"{share}/f.bin", **{"If-Match": etag})
    assert conditional.status_code == 400
    assert conditional.headers["x-ms-error-code"] == "ConditionHeadersNotSupported"

    head = requests.head(f"{fake.endpoint}/{share}/nope?{fake.account_sas()}", timeout=5)
    assert head.status_code == 404 and head.headers["x-ms-error-code"] == "ResourceNotFound"

    bad_page = _sas_get(fake, share, "restype=directory&comp=list&maxresults=0")
    assert bad_page.status_code == 400 and "<Code>OutOfRangeQueryParameterValue</Code>" in bad_page.text


def test_faults_cut_and_stall(fake_azure_files: FakeAzureFiles) -> None:
    fake = fake_azure_files
    share = fake.create_share()
    fake.put(share, "f.bin", b"z" * 200_000)
    fake.cut(f"{share}/f.bin", after_bytes=1000)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        _sas_get(fake, f"{share}/f.bin")
    fake.stall(f"{share}/f.bin", after_bytes=10, seconds=30)
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"{fake.endpoint}/{share}/f.bin?{fake.account_sas()}", timeout=0.3)
    assert _sas_get(fake, f"{share}/f.bin").content == b"z" * 200_000


def test_connection_string(fake_azure_files: FakeAzureFiles) -> None:
    share = fake_azure_files.create_share()
    fake_azure_files.put(share, "a/b/c.txt", b"deep")
    service = ShareServiceClient.from_connection_string(fake_azure_files.connection_string)
    assert service.get_share_client(share).get_file_client("a/b/c.txt").download_file().readall() == b"deep"


def _in(delta: timedelta):  # type: ignore[no-untyped-def]
    from datetime import datetime, timezone

    return datetime.now(timezone.utc) + delta
