"""The FTP test server answers the standard library's ftplib as RFC 959/3659 say."""

from __future__ import annotations

import ftplib
import time

import pytest

from tests.servers.ftp_server import FtpServer


def connect(server: FtpServer, user: str = "", password: str = "") -> ftplib.FTP:
    ftp = ftplib.FTP()
    ftp.connect(server.host, server.port, timeout=10)
    ftp.login(user or "anonymous", password or "anonymous@")
    return ftp


def test_named_and_anonymous_logins_work_and_bad_passwords_are_530(ftp_server: FtpServer) -> None:
    with connect(ftp_server, ftp_server.user, ftp_server.password) as ftp:
        assert ftp.pwd() == "/"
    with connect(ftp_server) as ftp:
        assert ftp.pwd() == "/"
    with pytest.raises(ftplib.error_perm, match=r"^530"), connect(ftp_server, ftp_server.user, "wrong"):
        pass


def test_mlst_describes_one_file_and_mlsd_lists_a_directory(ftp_server: FtpServer) -> None:
    d = ftp_server.new_dir()
    ftp_server.put(f"{d}/model.bin", b"x" * 1234, mtime=1_700_000_000)
    ftp_server.put(f"{d}/sub/a.txt", b"a")
    with connect(ftp_server) as ftp:
        reply = ftp.sendcmd(f"MLST /{d}/model.bin")
        lines = reply.splitlines()
        assert lines[0].startswith("250-") and lines[-1].startswith("250")
        facts, _, name = lines[1].strip().partition(" ")
        parsed = dict(f.split("=", 1) for f in facts.rstrip(";").split(";"))
        assert name == f"/{d}/model.bin"
        assert parsed["type"] == "file" and parsed["size"] == "1234"
        assert parsed["modify"] == time.strftime("%Y%m%d%H%M%S", time.gmtime(1_700_000_000))
        entries = {name: facts["type"] for name, facts in ftp.mlsd(f"/{d}", ["type", "size"])}
        assert entries == {"model.bin": "file", "sub": "dir"}
        with pytest.raises(ftplib.error_perm, match=r"^550 SIZE not allowed in ASCII"):
            ftp.size(f"/{d}/model.bin")  # like vsftpd: sizes only in binary mode
        ftp.voidcmd("TYPE I")
        assert ftp.size(f"/{d}/model.bin") == 1234


def test_missing_paths_are_550(ftp_server: FtpServer) -> None:
    with connect(ftp_server) as ftp:
        with pytest.raises(ftplib.error_perm, match=r"^550"):
            ftp.sendcmd("MLST /no/such/file")
        with pytest.raises(ftplib.error_perm, match=r"^550"):
            ftp.retrbinary("RETR /no/such/file", lambda _: None)


def test_rest_then_retr_starts_at_the_offset(ftp_server: FtpServer) -> None:
    d = ftp_server.new_dir()
    data = bytes(range(256)) * 100
    ftp_server.put(f"{d}/r.bin", data)
    with connect(ftp_server) as ftp:
        ftp.voidcmd("TYPE I")
        with ftp.transfercmd(f"RETR /{d}/r.bin", rest=1000) as conn:
            got = b"".join(iter(lambda: conn.recv(65536), b""))
        assert ftp.voidresp().startswith("226")
    assert got == data[1000:]


def test_parallel_connections_are_served_at_once(ftp_server: FtpServer) -> None:
    clients = [connect(ftp_server) for _ in range(4)]
    try:
        assert all(c.voidcmd("NOOP").startswith("200") for c in clients)
    finally:
        for client in clients:
            client.close()


def test_replace_moves_the_modification_time_on(ftp_server: FtpServer) -> None:
    d = ftp_server.new_dir()
    ftp_server.put(f"{d}/v", b"1")
    with connect(ftp_server) as ftp:
        before = ftp.sendcmd(f"MDTM /{d}/v")
        ftp_server.replace(f"{d}/v", b"2")
        assert ftp.sendcmd(f"MDTM /{d}/v") != before
