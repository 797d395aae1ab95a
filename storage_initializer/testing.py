"""The provider conformance suite: one set of tests every provider must pass.

A provider's tests subclass :class:`ProviderConformance` and supply a
``store`` fixture returning a :class:`ConformanceStore` for a real (or
faithfully emulated) server. The suite then checks the contract the engine
relies on: listing, a single object, a nested prefix, directory semantics
(a prefix is a directory: ``model`` never pulls ``model-v2/``), empty files,
directory markers, ranged reads, multi-part downloads, a version change
mid-download, and not-found errors, through the provider API and through
the engine.

Example (see ``tests/providers/`` and ``examples/`` for real ones)::

    class TestMyConformance(ProviderConformance):
        @pytest.fixture
        def store(self, my_server):
            return MyStore(my_server)

Requires pytest; import it only from tests.
"""

from __future__ import annotations

import os
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import pytest

from storage_initializer.engine.netloop import Fetch, NetLoop
from storage_initializer.errors import (
    AccessDeniedError,
    NotFoundError,
    ObjectChangedError,
    StorageInitializerError,
    UsageError,
)
from storage_initializer.provider import Provider, ProviderContext, RemoteObject
from storage_initializer.registry import Registry
from storage_initializer.runner import download
from storage_initializer.settings import Settings


class ConformanceStore(ABC):
    """How the suite drives one provider's server. Each test gets a fresh root."""

    #: The provider class under test.
    provider_class: ClassVar[type[Provider]]
    #: Set False for stores that cannot hold a ``dir/`` marker object.
    supports_markers: ClassVar[bool] = True
    #: Set False for stores whose objects carry no version (no change detection).
    supports_versions: ClassVar[bool] = True
    #: Set False for stores where a URI cannot name a directory.
    supports_directories: ClassVar[bool] = True

    def __init__(self) -> None:
        self.root_name = f"conf-{uuid.uuid4().hex[:10]}"

    @abstractmethod
    def env(self) -> Mapping[str, str]:
        """Environment the provider needs (endpoint, credentials)."""

    @abstractmethod
    def uri_for(self, key: str) -> str:
        """The URI of ``key`` below this test's root ('' is the root itself)."""

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Create or replace the object ``key`` below this test's root."""

    def replace(self, key: str, data: bytes) -> None:
        """Replace an object with new content (a new version)."""
        self.put(key, data)

    def provider(self) -> Provider:
        return self.provider_class(ProviderContext(env=dict(self.env()), stall_timeout=30, concurrency=4))

    # -- optional hooks: a store returns None (the default) when it cannot do it ----------
    #: Keys beyond plain ASCII names that the store holds (below a plain directory);
    #: a store whose names are narrower lists the ones it can hold.
    unusual_keys: ClassVar[Sequence[str]] = ("ünïcødé/模型.bin", "percent/a%20b%2Fc.bin", "space/with space.txt")

    def malformed_uri(self) -> str | None:
        """A URI the provider's formats match but whose form is wrong (a usage error)."""
        return None

    def denied_env(self) -> Mapping[str, str] | None:
        """An environment whose credentials the server refuses (access denied)."""
        return None

    def fail_once(self, key: str) -> bool:
        """Make the next read of ``key`` fail with a transient error (a 503, a reset); False if unsupported."""
        return False

    def stall_once(self, key: str, seconds: float) -> bool:
        """Make the next read of ``key`` send some bytes, then nothing for ``seconds``; False if unsupported."""
        return False


def _loop_read(
    loop: NetLoop, provider: Provider, uri: str, obj: RemoteObject, start: int, end: int | None, tmp_path: Path
) -> bytes:
    """Bytes ``[start, end)`` of ``obj`` as the engine's event loop fetches them from ``http_range``."""
    stop = end if end is not None else obj.size
    request = provider.http_range(uri, obj, start, stop)
    assert request is not None, "http_range described one read and not the next"
    path = tmp_path / f"loop-{uuid.uuid4().hex[:8]}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        loop.fetch(Fetch(request, fd, start, stop, None, lambda n: None, lambda: False, str(tmp_path)))
    finally:
        os.close(fd)
    return path.read_bytes()[start:]


def _payload(size: int, seed: int = 0) -> bytes:
    block = bytes((i * 31 + seed) % 251 for i in range(4096))
    return (block * (size // len(block) + 1))[:size]


def _files(root: Path) -> dict[str, bytes]:
    found = {}
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(".storage-initializer") or not path.is_file():
            continue
        found[rel] = path.read_bytes()
    return found


class ProviderConformance:
    """Subclass with a ``store`` fixture returning a :class:`ConformanceStore`."""

    # -- helpers ---------------------------------------------------------------
    @staticmethod
    def fetch(store: ConformanceStore, uri: str, dest: Path, **overrides: object) -> None:
        settings = Settings(
            env=dict(store.env()), concurrency=4, stall_timeout=30, retries=2, retry_backoff=0.05, heartbeat_seconds=60
        ).with_overrides(**overrides)
        registry = Registry.from_classes({"under-test": store.provider_class})
        (result,) = download([(uri, str(dest))], settings=settings, registry=registry)
        if result.error is not None:
            raise result.error

    @staticmethod
    def listing(store: ConformanceStore, uri: str) -> dict[str, RemoteObject]:
        provider = store.provider()
        try:
            return {o.key: o for o in provider.list(uri)}
        finally:
            provider.close()

    # -- listing ---------------------------------------------------------------
    def test_single_object_lists_its_base_name(self, store: ConformanceStore) -> None:
        store.put("dir/model.bin", b"weights")
        objects = self.listing(store, store.uri_for("dir/model.bin"))
        assert list(objects) == ["model.bin"]
        assert objects["model.bin"].size == len(b"weights")

    def test_directory_lists_relative_keys(self, store: ConformanceStore) -> None:
        if not store.supports_directories:
            pytest.skip("this store has no directories")
        store.put("m/a.txt", b"a")
        store.put("m/sub/b.bin", b"bb")
        store.put("m/sub/deeper/c", b"ccc")
        objects = self.listing(store, store.uri_for("m"))
        files = {k: o.size for k, o in objects.items() if not o.is_dir_marker}
        assert files == {"a.txt": 1, "sub/b.bin": 2, "sub/deeper/c": 3}

    # -- downloads through the engine ---------------------------------------------
    def test_single_object_download(self, store: ConformanceStore, tmp_path: Path) -> None:
        data = _payload(100_000)
        store.put("model.bin", data)
        self.fetch(store, store.uri_for("model.bin"), tmp_path / "out")
        assert _files(tmp_path / "out") == {"model.bin": data}

    def test_nested_prefix_download(self, store: ConformanceStore, tmp_path: Path) -> None:
        if not store.supports_directories:
            pytest.skip("this store has no directories")
        tree = {"m/a.txt": b"a", "m/sub/b.bin": _payload(5000, 1), "m/sub/deeper/c": _payload(70_000, 2)}
        for key, data in tree.items():
            store.put(key, data)
        self.fetch(store, store.uri_for("m"), tmp_path / "out")
        assert _files(tmp_path / "out") == {k[2:]: v for k, v in tree.items()}

    def test_trailing_slash_names_the_same_directory(self, store: ConformanceStore, tmp_path: Path) -> None:
        if not store.supports_directories:
            pytest.skip("this store has no directories")
        store.put("m/a.txt", b"a")
        self.fetch(store, store.uri_for("m") + "/", tmp_path / "out")
        assert _files(tmp_path / "out") == {"a.txt": b"a"}

    def test_prefix_is_a_directory_not_a_string_prefix(self, store: ConformanceStore, tmp_path: Path) -> None:
        if not store.supports_directories:
            pytest.skip("this store has no directories")
        store.put("model/weights.bin", b"right")
        store.put("model-v2/weights.bin", b"sibling")
        store.put("model.bin", b"sibling file")
        self.fetch(store, store.uri_for("model"), tmp_path / "out")
        assert _files(tmp_path / "out") == {"weights.bin": b"right"}

    def test_empty_files_are_kept(self, store: ConformanceStore, tmp_path: Path) -> None:
        if not store.supports_directories:
            pytest.skip("this store has no directories")
        store.put("m/empty", b"")
        store.put("m/full", b"x")
        self.fetch(store, store.uri_for("m"), tmp_path / "out")
        assert _files(tmp_path / "out") == {"empty": b"", "full": b"x"}

    def test_directory_markers_create_no_file(self, store: ConformanceStore, tmp_path: Path) -> None:
        if not (store.supports_directories and store.supports_markers):
            pytest.skip("this store has no directory markers")
        store.put("m/", b"")
        store.put("m/sub/", b"")
        store.put("m/sub/file", b"f")
        self.fetch(store, store.uri_for("m"), tmp_path / "out")
        assert _files(tmp_path / "out") == {"sub/file": b"f"}

    def test_multipart_download_is_exact(self, store: ConformanceStore, tmp_path: Path) -> None:
        data = _payload(3 * 1024 * 1024 + 12345, 3)
        store.put("big.bin", data)
        self.fetch(
            store, store.uri_for("big.bin"), tmp_path / "out", part_size=512 * 1024, multipart_threshold=1024 * 1024
        )
        assert (tmp_path / "out" / "big.bin").read_bytes() == data

    def test_missing_object_is_not_found(self, store: ConformanceStore, tmp_path: Path) -> None:
        uri = store.uri_for("does-not-exist")
        with pytest.raises(NotFoundError):
            self.fetch(store, uri, tmp_path / "out")
        assert not any(p.is_file() for p in (tmp_path / "out").rglob("*") if ".storage-initializer" not in str(p))

    # -- the read contract ---------------------------------------------------------
    def test_open_range_returns_exact_bytes(self, store: ConformanceStore) -> None:
        data = _payload(50_000, 4)
        store.put("r.bin", data)
        provider = store.provider()
        try:
            (obj,) = list(provider.list(store.uri_for("r.bin")))
            for start, end in ((0, 10), (10, 20), (49_990, 50_000), (1234, None), (0, None)):
                with provider.open_range(store.uri_for("r.bin"), obj, start, end) as stream:
                    got = stream.read() if end is None else _read_exactly(stream, end - start)
                assert got == data[start:end], (start, end)
        finally:
            provider.close()

    def test_version_change_is_detected(self, store: ConformanceStore) -> None:
        if not store.supports_versions:
            pytest.skip("this store has no object versions")
        store.put("v.bin", _payload(20_000, 5))
        provider = store.provider()
        try:
            (obj,) = list(provider.list(store.uri_for("v.bin")))
            store.replace("v.bin", _payload(20_000, 6))
            with pytest.raises(ObjectChangedError):  # noqa: SIM117 - the error may come from either step
                with provider.open_range(store.uri_for("v.bin"), obj, 100, 200) as stream:
                    _read_exactly(stream, 100)
        finally:
            provider.close()

    def test_http_range_reads_exact_bytes_on_the_event_loop(self, store: ConformanceStore, tmp_path: Path) -> None:
        """A provider that describes its reads (``http_range``) gets the bytes ``open_range`` gets,
        sent by the engine's event loop itself, and a replaced object fails its check."""
        data = _payload(50_000, 7)
        store.put("h.bin", data)
        provider = store.provider()
        loop = NetLoop(64 * 1024, stall_timeout=30, connect_timeout=10)
        uri = store.uri_for("h.bin")
        try:
            (obj,) = list(provider.list(uri))
            if provider.http_range(uri, obj, 0, 10) is None:
                pytest.skip("this provider's reads go through open_range")
            for start, end in ((0, 10), (10, 20), (49_990, 50_000), (1234, None), (0, None)):
                assert _loop_read(loop, provider, uri, obj, start, end, tmp_path) == data[start:end], (start, end)
            if store.supports_versions:
                store.replace("h.bin", _payload(50_000, 8))
                with pytest.raises(ObjectChangedError):
                    _loop_read(loop, provider, uri, obj, 100, 200, tmp_path)
        finally:
            loop.close()
            provider.close()

    # -- keys, URIs and failures -------------------------------------------------------
    def test_unicode_and_percent_encoded_keys(self, store: ConformanceStore, tmp_path: Path) -> None:
        if not store.unusual_keys:
            pytest.skip("this store holds no keys beyond plain ASCII names")
        for index, name in enumerate(store.unusual_keys):
            data = _payload(1000 + index, index)
            store.put(f"u{index}/{name}", data)
            dest = tmp_path / f"out{index}"
            if store.supports_directories:  # listed below a plain directory: the key comes back as is
                self.fetch(store, store.uri_for(f"u{index}"), dest)
                assert _files(dest) == {name: data}, name
            else:
                self.fetch(store, store.uri_for(f"u{index}/{name}"), dest)
                assert _files(dest) == {name.rsplit("/", 1)[-1]: data}, name

    def test_malformed_uri_is_a_usage_error(self, store: ConformanceStore, tmp_path: Path) -> None:
        uri = store.malformed_uri()
        if uri is None:
            pytest.skip("the store names no malformed URI of this provider")
        with pytest.raises(UsageError):
            self.fetch(store, uri, tmp_path / "out")
        assert not (tmp_path / "out").exists()

    def test_access_denied_is_permanent_and_names_the_uri(self, store: ConformanceStore, tmp_path: Path) -> None:
        env = store.denied_env()
        if env is None:
            pytest.skip("the store's server refuses no credentials")
        store.put("secret.bin", b"classified")
        uri = store.uri_for("secret.bin")
        settings = Settings(env=dict(env), concurrency=2, retries=3, retry_backoff=5.0, heartbeat_seconds=60)
        registry = Registry.from_classes({"under-test": store.provider_class})
        started = time.monotonic()
        (result,) = download([(uri, str(tmp_path / "out"))], settings=settings, registry=registry)
        assert isinstance(result.error, AccessDeniedError), result.error
        assert not result.error.retryable
        assert time.monotonic() - started < 5.0, "access denied was retried"
        assert store.root_name in str(result.error), result.error

    def test_transient_error_is_retried(self, store: ConformanceStore, tmp_path: Path) -> None:
        data = _payload(30_000, 7)
        store.put("flaky.bin", data)
        if not store.fail_once("flaky.bin"):
            pytest.skip("the store's server cannot inject a transient failure")
        self.fetch(store, store.uri_for("flaky.bin"), tmp_path / "out")
        assert (tmp_path / "out/flaky.bin").read_bytes() == data

    def test_stall_is_detected_and_retried(self, store: ConformanceStore, tmp_path: Path) -> None:
        data = _payload(300_000, 8)
        store.put("stall.bin", data)
        if not store.stall_once("stall.bin", 30.0):
            pytest.skip("the store's server cannot inject a stall")
        started = time.monotonic()
        self.fetch(store, store.uri_for("stall.bin"), tmp_path / "out", stall_timeout=1.0)
        assert (tmp_path / "out/stall.bin").read_bytes() == data
        assert time.monotonic() - started < 20.0, "the stall was waited out, not detected"

    def test_errors_are_typed(self, store: ConformanceStore) -> None:
        provider = store.provider()
        try:
            with pytest.raises(StorageInitializerError) as info:
                list(provider.list(store.uri_for("nope/nothing-here")))
            assert isinstance(info.value, NotFoundError)
        finally:
            provider.close()


def _read_exactly(stream: object, n: int) -> bytes:
    chunks = []
    remaining = n
    read = getattr(stream, "read")  # noqa: B009
    while remaining:
        chunk = read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


__all__ = ["ConformanceStore", "ProviderConformance"]
