"""The KServe archive rule, and archives that try to escape or explode."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.cli import run_cli, tree
from tests.servers.http_server import HttpFileServer


def _tar(members: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:  # type: ignore[call-overload]
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                archive.addfile(member)
            else:
                name, data = member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _zip(members: dict[str, bytes], symlink: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = 0o120777 << 16
            archive.writestr(info, "/etc/passwd")
    return buffer.getvalue()


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


@pytest.mark.parametrize(
    ("name", "mode"),
    [("model.tar.gz", "w:gz"), ("model.tgz", "w:gz"), ("m.tar", "w"), ("m.tar.bz2", "w:bz2"), ("m.tar.xz", "w:xz")],
)
def test_single_tar_is_extracted_and_removed(tmp_path: Path, http_server: HttpFileServer, name: str, mode: str) -> None:
    data = _tar([("./model/weights.bin", b"w" * 1000), ("./model/config.json", b"{}"), ("top.txt", b"t")], mode)
    url = http_server.add(f"/a/{name}", data, content_type="application/gzip")
    result = run_cli([url, str(tmp_path / "out")])
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path / "out") == {"model/weights.bin": b"w" * 1000, "model/config.json": b"{}", "top.txt": b"t"}
    assert "extracted 3 files from" in result.stderr
    http_server.reset_counters()
    again = run_cli([url, str(tmp_path / "out")])
    assert again.returncode == 0 and "was already extracted" in again.stderr
    assert http_server.bytes_sent <= 1


def test_single_zip_is_extracted(tmp_path: Path, http_server: HttpFileServer) -> None:
    url = http_server.add("/model.zip", _zip({"m/a.bin": b"a", "m/b/c.json": b"c"}), content_type="application/zip")
    result = run_cli([url, str(tmp_path / "out")])
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path / "out") == {"m/a.bin": b"a", "m/b/c.json": b"c"}


def test_links_inside_the_archive_are_kept(tmp_path: Path, http_server: HttpFileServer) -> None:
    data = _tar([("d/real.bin", b"real"), _link("d/soft", "real.bin"), _link("d/hard", "d/real.bin", tarfile.LNKTYPE)])
    url = http_server.add("/links.tar.gz", data)
    result = run_cli([url, str(tmp_path / "out")])
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out" / "d"
    assert (out / "soft").is_symlink() and (out / "soft").read_bytes() == b"real"
    assert (out / "hard").stat().st_ino == (out / "real.bin").stat().st_ino


@pytest.mark.parametrize(
    "hostile",
    [
        pytest.param(lambda: _tar([("../escape.txt", b"x")]), id="dotdot-tar"),
        pytest.param(lambda: _tar([("/tmp/abs-escape.txt", b"x")]), id="absolute-tar"),
        pytest.param(lambda: _tar([_link("evil", "/etc/passwd")]), id="absolute-symlink"),
        pytest.param(lambda: _tar([_link("evil", "../../../etc/passwd")]), id="escaping-symlink"),
        pytest.param(lambda: _tar([_link("evil", "../../outside", tarfile.LNKTYPE)]), id="escaping-hardlink"),
        pytest.param(lambda: _tar([_link("d", "/tmp"), ("d/planted.txt", b"x")]), id="file-through-symlink"),
        pytest.param(lambda: _tar([_device("null")]), id="device-file"),
        pytest.param(lambda: _zip({"../zip-slip.txt": b"x"}), id="zip-slip"),
        pytest.param(lambda: _zip({"/abs-zip.txt": b"x"}), id="zip-absolute"),
        pytest.param(lambda: _zip({"ok.txt": b"x"}, symlink="link"), id="zip-symlink"),
    ],
)
def test_hostile_archives_write_nothing(tmp_path: Path, http_server: HttpFileServer, hostile: object) -> None:
    data = hostile()  # type: ignore[operator]
    name = "bad.zip" if data[:2] == b"PK" else "bad.tar.gz"
    url = http_server.add(f"/{name}", data)
    dest = tmp_path / "deep" / "out"
    result = run_cli([url, str(dest)])
    assert result.returncode == 1
    assert "archive" in result.stderr and "refused" in result.stderr
    assert tree(dest, after_failure=True) == {name: data}  # only the archive itself, kept for inspection
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep"]
    assert not Path("/tmp/abs-escape.txt").exists() and not Path("/tmp/planted.txt").exists()


def _device(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    info.devmajor, info.devminor = 1, 3
    return info


def test_tarball_of_an_earlier_dest_leaves_its_state_behind(tmp_path: Path, http_server: HttpFileServer) -> None:
    # `tar czf model.tgz -C /mnt/models .` after a download carries the resume state along.
    state = tarfile.TarInfo("./.storage-initializer")
    state.type = tarfile.DIRTYPE
    data = _tar([state, ("./.storage-initializer/manifest.jsonl", b"{}\n"), ("./model.bin", b"m" * 100)])
    url = http_server.add("/a/model.tgz", data)
    result = run_cli([url, str(tmp_path / "out")])
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path / "out") == {"model.bin": b"m" * 100}
    rerun = run_cli([url, str(tmp_path / "out")])  # the extraction is recorded on DEST: not fetched again
    assert rerun.returncode == 0 and "already extracted" in rerun.stderr, rerun.stderr


def test_member_named_like_the_archive_is_kept(tmp_path: Path, http_server: HttpFileServer) -> None:
    inner = _tar([("README", b"r")], mode="w")
    url = http_server.add("/model.tar", _tar([("model.tar", inner), ("README", b"outer")], mode="w"))
    result = run_cli([url, str(tmp_path / "out")])
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path / "out") == {"model.tar": inner, "README": b"outer"}


def test_archive_bomb_is_capped(tmp_path: Path, http_server: HttpFileServer) -> None:
    data = _tar([("zeros.bin", bytes(20 * 1024 * 1024))])
    url = http_server.add("/bomb.tar.gz", data)
    result = run_cli([url, str(tmp_path / "out")], {"STORAGE_INITIALIZER_MAX_EXTRACT_RATIO": "10"})
    assert result.returncode == 1
    assert "refusing a possible bomb" in result.stderr
    assert tree(tmp_path / "out", after_failure=True) == {"bomb.tar.gz": data}


def test_corrupt_archive_is_a_clear_error(tmp_path: Path, http_server: HttpFileServer) -> None:
    url = http_server.add("/broken.tar.gz", b"this is not gzip at all")
    result = run_cli([url, str(tmp_path / "out")])
    assert result.returncode == 1
    assert "cannot open broken.tar.gz as a tar archive" in result.stderr


def test_no_extract_flag_and_multi_file_listings_keep_archives(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    archive = _tar([("inner.txt", b"i")])
    (source / "a.tar.gz").write_bytes(archive)
    kept = run_cli(["--no-extract", str(source / "a.tar.gz"), str(tmp_path / "one")])
    assert kept.returncode == 0 and tree(tmp_path / "one") == {"a.tar.gz": archive}
    (source / "readme.md").write_bytes(b"r")
    two = run_cli([str(source), str(tmp_path / "two")])
    assert two.returncode == 0 and tree(tmp_path / "two") == {"a.tar.gz": archive, "readme.md": b"r"}
