"""Unit tests of the core's pure pieces: paths, patterns, settings, redaction, parts."""

from __future__ import annotations

import errno
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage_initializer import local as local_module
from storage_initializer.engine.parts import plan_parts
from storage_initializer.engine.paths import LayoutChecker, PathFilter, safe_relpath
from storage_initializer.engine.progress import Progress, Smoother, bar_graphic, human_rate, plural
from storage_initializer.errors import ConfigError, UnsafePathError, classify
from storage_initializer.local import LocalProvider
from storage_initializer.provider import ProviderContext, RemoteObject, UriFormat
from storage_initializer.redact import clear_registered_secrets, redact, register_env_secrets, register_secret
from storage_initializer.settings import MiB, Settings, parse_patterns, parse_size, settings_from_env


@pytest.mark.parametrize(
    "key",
    [
        "../x",
        "a/../../x",
        "a/./b",
        "/etc/passwd",
        "a//b",
        "a\\..\\b",
        "C:/windows",
        "a\x00b",
        "x" * 256,
        "/".join(["d" * 200] * 21),
        ".storage-initializer/manifest.jsonl",
        "dir/.f.si-partial",
        "",
    ],
)
def test_hostile_keys_are_refused(key: str) -> None:
    with pytest.raises(UnsafePathError):
        safe_relpath(key)


@pytest.mark.parametrize("key", ["model.bin", "a/b/c.json", "ünïcode/naïve file.txt", ".hidden", "x" * 255, "a..b"])
def test_ordinary_keys_pass_unchanged(key: str) -> None:
    assert safe_relpath(key) == key


def test_layout_checker_refuses_file_and_directory_with_one_name() -> None:
    layout = LayoutChecker()
    layout.add("a")
    with pytest.raises(UnsafePathError, match="'a/b' needs 'a' to be a directory"):
        layout.add("a/b")
    other = LayoutChecker()
    other.add("a/b")
    with pytest.raises(UnsafePathError, match="both a file and a directory"):
        other.add("a")
    with pytest.raises(UnsafePathError, match="same file"):
        other.add("a/b")


def test_case_differing_names_are_distinct_files() -> None:
    layout = LayoutChecker()
    layout.add("Model.bin")
    layout.add("model.bin")  # a case-sensitive filesystem holds both (documented)


def test_path_filter_follows_kserve_fnmatch_semantics() -> None:
    keep = PathFilter(allow=["*.json", "tokenizer/"], ignore=["secret*"])
    assert keep.keep("config.json")
    assert keep.keep("sub/config.json")  # fnmatch's * crosses '/'
    assert keep.keep("tokenizer/vocab.txt")
    assert not keep.keep("model.bin")
    assert not keep.keep("secret.json")
    assert PathFilter().keep("anything")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('["*.json", "*.safetensors"]', ("*.json", "*.safetensors")),
        ("*.json, *.safetensors", ("*.json", "*.safetensors")),
        ('"*.bin"', ("*.bin",)),
        ("", ()),
        ("  ", ()),
    ],
)
def test_patterns_accept_json_or_comma_lists(text: str, expected: tuple[str, ...]) -> None:
    assert parse_patterns(text) == expected


def test_sizes_parse_binary_units() -> None:
    assert parse_size("64M", "x") == 64 * MiB
    assert parse_size("1GiB", "x") == 1024 * MiB
    assert parse_size("4096", "x") == 4096
    with pytest.raises(ConfigError):
        parse_size("lots", "x")


def test_settings_come_from_the_environment() -> None:
    settings = settings_from_env(
        {
            "STORAGE_INITIALIZER_CONCURRENCY": "3",
            "STORAGE_INITIALIZER_PART_SIZE": "16M",
            "STORAGE_INITIALIZER_STALL_TIMEOUT": "2.5",
            "STORAGE_ALLOW_PATTERNS": "*.json",
            "STORAGE_INITIALIZER_VERIFY_CHECKSUMS": "false",
        }
    )
    assert settings.concurrency == 3
    assert settings.part_size == 16 * MiB
    assert settings.stall_timeout == 2.5
    assert settings.allow_patterns == ("*.json",)
    assert settings.verify_checksums is False


def test_documented_defaults_can_be_set_explicitly() -> None:
    # The README lists `auto` as the default of STORAGE_INITIALIZER_PROGRESS.
    assert settings_from_env({"STORAGE_INITIALIZER_PROGRESS": "auto"}).progress_bar is None
    assert settings_from_env({"STORAGE_INITIALIZER_PROGRESS": "true"}).progress_bar is True
    # logging's own aliases, in any case
    assert settings_from_env({"STORAGE_INITIALIZER_LOG_LEVEL": "warn"}).log_level == "WARNING"
    assert settings_from_env({"STORAGE_INITIALIZER_LOG_LEVEL": " debug "}).log_level == "DEBUG"


@pytest.mark.parametrize(
    "env",
    [
        {"STORAGE_INITIALIZER_CONCURRENCY": "zero"},
        {"STORAGE_INITIALIZER_CONCURRENCY": "0"},
        {"STORAGE_INITIALIZER_FSYNC": "maybe"},
        {"STORAGE_INITIALIZER_LOG_LEVEL": "LOUD"},
        {"STORAGE_INITIALIZER_PART_SIZE": "big"},
        # nan compares false with every minimum; inf overflows socket and thread timeouts
        {"STORAGE_INITIALIZER_STALL_TIMEOUT": "nan"},
        {"STORAGE_INITIALIZER_STALL_TIMEOUT": "inf"},
        {"STORAGE_INITIALIZER_HEARTBEAT": "inf"},
        {"STORAGE_INITIALIZER_RETRY_BACKOFF": "NaN"},
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="STORAGE_INITIALIZER_"):
        settings_from_env(env)


def test_parts_adapt_to_size_and_settings() -> None:
    settings = Settings(concurrency=16)
    assert plan_parts(RemoteObject("a", 1000), settings) is None
    assert plan_parts(RemoteObject("a", None), settings) is None
    assert plan_parts(RemoteObject("a", 100 * MiB, supports_ranges=False), settings) is None
    # Two parts per stream of the file (file_concurrency, 4 by default), 8-128 MiB.
    parts = plan_parts(RemoteObject("a", 2048 * MiB), settings)
    assert parts is not None and len(parts) == 16 and parts[-1][1] == 2048 * MiB
    assert len(plan_parts(RemoteObject("a", 1024 * MiB), settings) or []) == 8
    assert len(plan_parts(RemoteObject("a", 2048 * MiB), Settings(file_concurrency=16)) or []) == 32
    parts = plan_parts(RemoteObject("a", 100 * MiB + 1), settings)
    assert parts is not None and len(parts) == 8
    assert parts[-1][1] == 100 * MiB + 1
    assert all(a[1] == b[0] for a, b in itertools.pairwise(parts))
    parts = plan_parts(RemoteObject("a", 40 * MiB), settings)
    assert parts is not None and parts[0] == (0, 8 * MiB) and len(parts) == 5  # never under 8 MiB
    tuned = Settings(part_size=MiB, multipart_threshold=2 * MiB)
    assert len(plan_parts(RemoteObject("a", 5 * MiB), tuned) or []) == 5


def test_redaction_masks_urls_headers_and_registered_values() -> None:
    clear_registered_secrets()
    try:
        text = (
            "https://user:hunter2@host/p?sv=1&sig=abc%2Fdef&se=2 "
            "https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA/x&X-Amz-Signature=ff00 "
            "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=c2VjcmV0a2V5;EndpointSuffix=x "
            "{'Authorization': 'Bearer tok_123456'}"
        )
        out = redact(text)
        for secret in ("hunter2", "abc%2Fdef", "AKIA/x", "ff00", "c2VjcmV0a2V5", "tok_123456"):
            assert secret not in out
        assert "sv=1" in out and "se=2" in out and "AccountName=a" in out
        # An unencoded '@' in a password: userinfo runs to the last '@' of the authority.
        out = redact("http://user:p@ss-word@host:80/x?a=1 and http://h2/y@z")
        assert "ss-word" not in out and "http://***@host:80/x" in out and "http://h2/y@z" in out
        register_env_secrets({"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG", "AWS_ACCESS_KEY_ID": "AKIAPUBLICID"})
        register_secret("hf_abcdefghijkl")
        out = redact("key wJalrXUtnFEMI/K7MDENG or wJalrXUtnFEMI%2FK7MDENG and hf_abcdefghijkl, id AKIAPUBLICID")
        assert "wJalr" not in out and "hf_abc" not in out
        assert "AKIAPUBLICID" in out  # an access key id is not a secret
    finally:
        clear_registered_secrets()


def test_header_variables_are_secret() -> None:
    clear_registered_secrets()
    try:
        register_env_secrets({"models.example.com-headers": '{"X-Token": "opaque-value-123"}'})
        assert "opaque-value-123" not in redact("sent opaque-value-123")
    finally:
        clear_registered_secrets()


def test_uri_formats_match_as_kserve_does() -> None:
    assert UriFormat(prefix="s3://").matches("s3://b/k")
    assert not UriFormat(prefix="s3://").matches("gs://b/k")
    blob = UriFormat(regex=r"https://(.+?)\.blob\.core\.windows\.net/(.+)")
    assert blob.matches("https://acct.blob.core.windows.net/c/p")
    assert blob.as_crd() == {"regex": r"https://(.+?)\.blob\.core\.windows\.net/(.+)"}
    with pytest.raises(ValueError):
        UriFormat()


def test_unknown_exceptions_are_classified() -> None:
    assert classify(ConnectionResetError()).retryable
    assert classify(TimeoutError()).retryable
    assert not classify(KeyError("x")).retryable
    assert "KeyError" in str(classify(KeyError("x")))


def test_source_key_keeps_store_and_path_only() -> None:
    from storage_initializer.engine.state import source_key

    assert source_key("s3://bucket/models/iris/") == "s3://bucket/models/iris"
    assert source_key("HTTPS://user:pw@host:8443/m/model.bin?X-Amz-Signature=abc#frag") == (
        "https://host:8443/m/model.bin"
    )
    assert source_key("https://acct.blob.core.windows.net/c/m?sv=1&sig=s3cr3t") == (
        "https://acct.blob.core.windows.net/c/m"
    )
    assert source_key("/data/models/iris") == "/data/models/iris"


def test_own_artifacts_are_recognised_at_any_depth() -> None:
    from storage_initializer.engine.paths import is_own_artifact

    assert is_own_artifact(".storage-initializer/manifest.jsonl")
    assert is_own_artifact("models/a/.storage-initializer/partial/x.json")
    assert is_own_artifact("models/.weights.bin.si-partial")
    assert not is_own_artifact("models/weights.bin")
    assert not is_own_artifact("models/storage-initializer/x")


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_no_eta_until_bytes_have_flowed_for_a_few_seconds() -> None:
    """The first second (connections, slow start) would predict absurd ETAs such as 20m49s."""
    clock = _Clock()
    progress = Progress(clock=clock)
    progress.add_planned(100 * MiB)
    clock.now += 2.0  # listing, connecting
    progress.add_bytes(MiB)
    clock.now += 0.5
    assert "ETA" not in progress.line()
    for _ in range(4):  # 10 MiB/s from now on
        clock.now += 1.0
        progress.add_bytes(10 * MiB)
        progress.line()
    line = progress.line()
    assert "41.0 MiB / 100.0 MiB (41%)" in line and ", ETA " in line
    eta = line.split("ETA ")[1].split(",")[0]
    assert eta in ("5s", "6s", "7s"), line  # 59 MiB at about 10 MiB/s, not minutes


def test_rates_are_mib_per_second_everywhere() -> None:
    assert human_rate(3 * MiB) == "3.0 MiB/s"
    clock = _Clock()
    progress = Progress(clock=clock)
    progress.add_planned(MiB)
    progress.add_bytes(MiB // 2)
    clock.now += 1.0
    assert ", 0.5 MiB/s" in progress.line() and "MB/s" not in progress.line()
    assert plural(1, "file") == "1 file" and plural(0, "file") == "0 files" and plural(2, "file") == "2 files"


def test_the_terminal_bar_moves_between_buffer_sized_steps() -> None:
    smoother = Smoother()
    total = 10 * MiB
    assert smoother.update(0, total, 0.0, 0.0) == 0
    assert smoother.update(MiB, total, MiB, 1.0) == MiB  # a real step: shown as it is
    between = [smoother.update(MiB, total, MiB, 1.0 + t / 10) for t in range(1, 10)]
    assert between == sorted(between) and MiB < between[0] < between[-1] <= 2 * MiB  # smooth, monotonic
    assert smoother.update(MiB, total, MiB, 5.0) == 2 * MiB  # never more than one step ahead of the truth
    assert smoother.update(2 * MiB, total, MiB, 5.1) == 2 * MiB  # the truth catches up: no jump back
    assert smoother.update(0, total, MiB, 5.2) == 0  # a retry that started over: shown at once
    assert bar_graphic(5 * MiB, total, width=10) == "[#####.....] " and bar_graphic(1, 0) == ""


def test_a_reflink_is_tried_once_per_filesystem_pair_and_leaves_nothing_when_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No reflink-capable filesystem here (ext4, tmpfs): FICLONE's two outcomes, simulated at the ioctl."""
    source = tmp_path / "src.bin"
    source.write_bytes(b"weights")
    st = os.stat(source)
    obj = RemoteObject(
        "src.bin", st.st_size, f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}", extra=str(source)
    )
    provider = LocalProvider(ProviderContext(env={}))
    calls: list[int] = []

    def refuse(fd: int, request: int, arg: int) -> int:
        calls.append(request)
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(local_module.fcntl, "ioctl", refuse)
    for name in ("a.tmp", "b.tmp"):
        assert provider.download_to("file://x", obj, str(tmp_path / name)) is False
        assert not (tmp_path / name).exists()  # the engine copies into a clean temp file
    assert calls == [local_module.FICLONE]  # the second file does not ask again

    def clone(fd: int, request: int, arg: int) -> int:
        os.write(fd, os.pread(arg, 1 << 20, 0))  # what FICLONE's shared blocks read as
        return 0

    monkeypatch.setattr(local_module.fcntl, "ioctl", clone)
    cloning = LocalProvider(ProviderContext(env={}))
    assert cloning.download_to("file://x", obj, str(tmp_path / "c.tmp")) is True
    assert (tmp_path / "c.tmp").read_bytes() == b"weights"
    assert (tmp_path / "c.tmp").stat().st_ino != st.st_ino


# -- provider.ChunkStream: an SDK's chunk iterator as a ByteStream ------------------
def test_chunk_stream_fills_buffers_across_chunks_and_maps_read_errors() -> None:
    from storage_initializer.errors import TransientError
    from storage_initializer.provider import ChunkStream

    closed: list[bool] = []
    stream = ChunkStream([b"abc", b"", b"defgh", b"i"], lambda: closed.append(True))
    buf = bytearray(4)
    got = []
    while n := stream.readinto(memoryview(buf)):
        got.append(bytes(buf[:n]))
    assert got == [b"abcd", b"efgh", b"i"]
    with stream:
        pass
    assert closed == [True]

    def broken() -> Iterator[bytes]:
        yield b"xy"
        raise ConnectionResetError("reset by peer")

    mapped = ChunkStream(broken(), lambda: None, lambda exc: TransientError(f"reading failed: {exc}"))
    assert mapped.read(2) == b"xy"
    with pytest.raises(TransientError, match="reset by peer"):
        mapped.read()
    unmapped = ChunkStream(broken(), lambda: None)
    with pytest.raises(ConnectionResetError):
        unmapped.read()
