"""The intermediate-object contract (RemoteObject.intermediate + Provider.assemble), provider-neutral.

A small plugin serves a tar split into chunks (a generic "split archive"): the chunks are
intermediate objects, and ``assemble`` concatenates them into the stream the engine extracts.
Driven through the public API (:func:`storage_initializer.download`) with the plugin registered
as a third party would be; the OCI provider's tests cover ranged reads, resume and retries
against a real registry.
"""

from __future__ import annotations

import io
import tarfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, ClassVar

import pytest

from storage_initializer import download
from storage_initializer.errors import ArchiveError, NotFoundError, StorageInitializerError
from storage_initializer.provider import Provider, RemoteObject, StagedObject, UriFormat
from storage_initializer.registry import ProviderEntry, Registry
from storage_initializer.settings import settings_from_env
from tests.cli import tree


def tar_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class SplitProvider(Provider):
    """``split://NAME``: the tar ``CHUNKS[NAME]``, served as chunks the provider joins."""

    uri_formats = (UriFormat(prefix="split://"),)
    CHUNKS: ClassVar[dict[str, list[bytes]]] = {}
    reads: ClassVar[list[str]] = []
    fail_after: ClassVar[int | None] = None  # assemble raises after writing this many bytes
    _lock = threading.Lock()

    def list(self, uri: str) -> Iterator[RemoteObject]:
        for number, chunk in enumerate(self.CHUNKS[uri.removeprefix("split://")]):
            yield RemoteObject(f"part-{number}", len(chunk), version=str(hash(chunk)), extra=chunk, intermediate=True)

    def open_range(self, uri: str, obj: RemoteObject, start: int, end: int | None) -> IO[bytes]:
        with self._lock:
            self.reads.append(obj.key)
        return io.BytesIO(obj.extra[start:end])

    def assemble(self, uri: str, staged: Sequence[StagedObject], out: IO[bytes]) -> None:
        written = 0
        for item in staged:
            with open(item.path, "rb") as handle:
                data = handle.read()
            if self.fail_after is not None and written + len(data) > self.fail_after:
                out.write(data[: self.fail_after - written])
                raise ArchiveError("the chunks do not join")
            out.write(data)
            written += len(data)


class NoAssembly(Provider):
    uri_formats = (UriFormat(prefix="noassembly://"),)

    def list(self, uri: str) -> Iterator[RemoteObject]:
        yield RemoteObject("input", 1, version="1", intermediate=True)

    def open_range(self, uri: str, obj: RemoteObject, start: int, end: int | None) -> IO[bytes]:
        return io.BytesIO(b"x")


def run(uri: str, dest: Path, **env: str) -> StorageInitializerError | None:
    registry = Registry([ProviderEntry("split", None, cls=SplitProvider), ProviderEntry("na", None, cls=NoAssembly)])
    (result,) = download([(uri, str(dest))], settings_from_env(env), registry)
    return result.error


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    SplitProvider.CHUNKS.clear()
    SplitProvider.reads.clear()
    SplitProvider.fail_after = None
    yield


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


FILES = {"config.json": b"{}", "weights/a.bin": b"a" * 50_000, "weights/b.bin": b"b" * 70_000}


def test_intermediate_objects_are_assembled_and_dest_holds_only_the_files(tmp_path: Path) -> None:
    SplitProvider.CHUNKS["m"] = split(tar_of(FILES), 40_000)
    assert run("split://m", tmp_path / "out") is None
    assert tree(tmp_path / "out") == FILES  # no chunk, no state, no temporary file
    assert sorted(set(SplitProvider.reads)) == [f"part-{n}" for n in range(len(SplitProvider.CHUNKS["m"]))]


def test_a_rerun_after_success_reads_nothing(tmp_path: Path) -> None:
    SplitProvider.CHUNKS["m"] = split(tar_of(FILES), 40_000)
    assert run("split://m", tmp_path / "out") is None
    SplitProvider.reads.clear()
    assert run("split://m", tmp_path / "out") is None
    assert SplitProvider.reads == []
    assert tree(tmp_path / "out") == FILES


def test_patterns_select_among_the_assembled_files(tmp_path: Path) -> None:
    SplitProvider.CHUNKS["m"] = split(tar_of(FILES), 40_000)
    error = run("split://m", tmp_path / "out", STORAGE_ALLOW_PATTERNS="weights/", STORAGE_IGNORE_PATTERNS="*b.bin")
    assert error is None
    assert tree(tmp_path / "out") == {"weights/a.bin": FILES["weights/a.bin"]}
    error = run("split://m", tmp_path / "none", STORAGE_ALLOW_PATTERNS="*.onnx")
    assert isinstance(error, NotFoundError) and "3 file(s) filtered out" in str(error)
    assert tree(tmp_path / "none", after_failure=True) == {}


def test_a_failing_assemble_publishes_nothing_and_is_the_error_reported(tmp_path: Path) -> None:
    SplitProvider.CHUNKS["m"] = split(tar_of(FILES), 40_000)
    SplitProvider.fail_after = 60_000  # after config.json and part of a.bin: the extraction sees a cut stream
    error = run("split://m", tmp_path / "out")
    assert isinstance(error, ArchiveError) and "the chunks do not join" in str(error)
    assert tree(tmp_path / "out", after_failure=True) == {}
    # The staged chunks are kept: the rerun assembles again without reading them.
    SplitProvider.fail_after = None
    SplitProvider.reads.clear()
    assert run("split://m", tmp_path / "out") is None
    assert SplitProvider.reads == []
    assert tree(tmp_path / "out") == FILES


def test_a_hostile_member_stops_a_writer_that_is_still_writing(tmp_path: Path) -> None:
    hostile = tar_of({"../escape": b"x", **{f"f{n}": b"y" * 100_000 for n in range(100)}})
    SplitProvider.CHUNKS["m"] = split(hostile, 1_000_000)  # ~10 MiB: more than a pipe holds
    error = run("split://m", tmp_path / "out")
    assert isinstance(error, ArchiveError) and "escape" in str(error)
    assert tree(tmp_path / "out", after_failure=True) == {}
    assert not (tmp_path / "escape").exists()


def test_a_provider_without_assemble_gets_a_clear_error(tmp_path: Path) -> None:
    error = run("noassembly://x", tmp_path / "out")
    assert error is not None and "NoAssembly listed intermediate objects but has no assemble() step" in str(error)
