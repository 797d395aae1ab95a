"""A faithful fake of Hadoop WebHDFS (a namenode and a datanode), for tests that cannot run Hadoop.

Two HTTP(S) listeners on 127.0.0.1 answer ``/webhdfs/v1/<path>?op=...`` the way Hadoop 3's
``NamenodeWebHdfsMethods`` and the datanode's ``WebHdfsHandler`` do (checked against their source and
the WebHDFS REST docs):

- Namenode, ``GET``: ``GETFILESTATUS`` (``{"FileStatus": {...}}``), ``LISTSTATUS`` (every entry, in
  byte order of the names, streamed as Hadoop prints it; a file lists itself with ``pathSuffix: ""``),
  ``LISTSTATUS_BATCH`` (``DirectoryListing`` / ``partialListing`` / ``remainingEntries``, pages of
  ``ls_limit`` entries after ``startAfter``), ``GETCONTENTSUMMARY``, ``GETHOMEDIRECTORY`` and ``OPEN``:
  ``307 Temporary Redirect`` to the datanode with ``op=OPEN``, the caller's ``doas``/``user.name``,
  ``namenoderpcaddress`` and ``offset`` (always), ``length`` and ``buffersize`` (when given), or
  ``200 {"Location": ...}`` with ``noredirect=true``. ``op`` is case-insensitive, as in Hadoop.
- Datanode, ``GET op=OPEN``: ``200`` ``application/octet-stream`` with ``Content-Length`` =
  ``min(length, size - offset)`` and ``Connection: close`` (the real datanode never keeps a read
  connection alive).
- FileStatus JSON has exactly Hadoop's keys (``accessTime blockSize childrenNum fileId group length
  modificationTime owner pathSuffix permission replication storagePolicy type``), sorted as Hadoop's
  ``TreeMap`` prints them; directories have ``length``/``blockSize``/``replication``/``accessTime`` 0.
- Errors are ``{"RemoteException": {"exception", "javaClassName", "message"}}`` with the status
  Hadoop's ``ExceptionHandler`` maps: ``FileNotFoundException`` 404 (``File does not exist: /x`` from
  GETFILESTATUS, ``File /x does not exist.`` from listings, ``File /x not found.`` from OPEN, ``Path
  is not a file: /x`` from the datanode), ``AccessControlException`` 403 (HDFS permission bits are
  enforced: traverse, READ, READ_EXECUTE; superuser ``hdfs`` and the ``supergroup`` bypass them),
  ``IOException`` 403 (OPEN offset out of range), ``EOFException`` 403 (datanode seek past EOF),
  ``SecurityException`` 403 (``doas`` without a matching ``hadoop.proxyuser`` rule),
  ``StandbyException`` 403 (a standby namenode, for HA failover), ``IllegalArgumentException`` 400
  (bad ``op`` / ``offset`` / ``length`` / ``buffersize`` / ``user.name``) and
  ``UnsupportedOperationException`` 400. Note that the docs' table says 401 for
  ``SecurityException``; the code says 403, and the code is what clusters run.
- Authentication happens in Hadoop's servlet filter, *before* WebHDFS, and answers Jetty HTML pages,
  not JSON: a missing ``user.name`` is the default web user ``dr.who`` unless ``anonymous_allowed``
  is off (then ``403 Anonymous requests are disallowed``); ``required_headers`` models a SPNEGO /
  gateway-protected namenode: without them, ``401`` with ``WWW-Authenticate: Negotiate``. The
  datanode does not authenticate (it trusts the namenode's redirect), as in Hadoop.
- HTTPS with a ``trustme`` CA (``tls=True``), optionally requiring a client certificate on both
  nodes (``require_client_cert=True``, Hadoop's ``dfs.client.https.need-auth``).

Not modelled: writes over HTTP (seed with :meth:`FakeWebHDFS.put`), symlinks, ACLs, xattrs,
snapshots, erasure coding, delegation tokens and real Kerberos. JSON answers carry a
``Content-Length`` where Jetty streams them chunked; clients must accept either.
Test hooks: a request log, bytes served per file, and faults (stall, cut, replace mid-read, errors).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import posixpath
import re
import shutil
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any, Literal, overload
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import pytest

from tests.servers.base import FakeHandler, FakeServer, FakeService, Fault, Request

PREFIX = "/webhdfs/v1"
SUPERUSER = "hdfs"
SUPERGROUP = "supergroup"
DEFAULT_WEB_USER = "dr.who"  # hadoop.http.staticuser.user
ROOT_FILE_ID = 16385  # INodeId.ROOT_INODE_ID
DEFAULT_BLOCK_SIZE = 128 * 1024 * 1024
_USER_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9._-]*[$]?$")  # dfs.webhdfs.user.provider.user.pattern
_GET_OPS = frozenset({
    "OPEN", "GETFILESTATUS", "LISTSTATUS", "LISTSTATUS_BATCH", "GETCONTENTSUMMARY", "GETQUOTAUSAGE",
    "GETFILECHECKSUM", "GETHOMEDIRECTORY", "GETDELEGATIONTOKEN", "GETTRASHROOT", "GETXATTRS", "LISTXATTRS",
    "CHECKACCESS", "GETACLSTATUS", "GETALLSTORAGEPOLICY", "GETSTORAGEPOLICY", "GETSNAPSHOTDIFF",
    "GETSNAPSHOTDIFFLISTING", "GETFILEBLOCKLOCATIONS", "GETSNAPSHOTTABLEDIRECTORYLIST", "GETSNAPSHOTLIST",
    "GET_BLOCK_LOCATIONS", "GETECPOLICY", "GETSERVERDEFAULTS", "GETLINKTARGET", "GETFILELINKSTATUS",
    "GETSTATUS", "GETECPOLICIES", "NULL",
})  # fmt: skip
_OP_ENUMS = {"GET": "GetOpParam", "PUT": "PutOpParam", "POST": "PostOpParam", "DELETE": "DeleteOpParam"}
_STANDBY_MESSAGE = "Operation category READ is not supported in state standby. Visit https://s.apache.org/sbnn-error"

Node = Literal["namenode", "datanode"]
FaultKind = Literal["stall", "cut", "replace", "error"]


class RemoteError(Exception):
    """An exception the way WebHDFS reports it: a status and a ``RemoteException`` JSON body."""

    def __init__(self, status: int, exception: str, java_class: str, message: str) -> None:
        super().__init__(message)
        self.status, self.exception, self.java_class, self.message = status, exception, java_class, message

    def body(self) -> bytes:
        payload = {"exception": self.exception, "javaClassName": self.java_class, "message": self.message}
        return _json({"RemoteException": payload})


def _not_found(message: str) -> RemoteError:
    return RemoteError(404, "FileNotFoundException", "java.io.FileNotFoundException", message)


def _bad_argument(message: str) -> RemoteError:
    return RemoteError(400, "IllegalArgumentException", "java.lang.IllegalArgumentException", message)


def _bad_param(name: str, reason: str) -> RemoteError:
    return _bad_argument(f'Invalid value for webhdfs parameter "{name}": {reason}')


class _FilterError(Exception):
    """A refusal by Hadoop's AuthenticationFilter: a Jetty HTML error page, not JSON."""

    def __init__(self, status: int, reason: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.headers = status, reason, dict(headers or {})


def _json(obj: object) -> bytes:
    """Compact, key-sorted JSON: what Hadoop's Jackson + TreeMap produce."""
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


@dataclass
class _Inode:
    is_dir: bool
    file_id: int
    owner: str
    group: str
    permission: int
    mtime: int
    atime: int
    data: bytes = b""
    replication: int = 1
    block_size: int = DEFAULT_BLOCK_SIZE
    children: dict[str, _Inode] = field(default_factory=dict)

    def status(self, suffix: str) -> dict[str, Any]:
        """The FileStatus JSON object (``JsonUtil.toJsonMap(HdfsFileStatus)``)."""
        return {
            "accessTime": 0 if self.is_dir else self.atime,
            "blockSize": 0 if self.is_dir else self.block_size,
            "childrenNum": len(self.children) if self.is_dir else 0,
            "fileId": self.file_id,
            "group": self.group,
            "length": 0 if self.is_dir else len(self.data),
            "modificationTime": self.mtime,
            "owner": self.owner,
            "pathSuffix": suffix,
            "permission": format(self.permission & 0o1777, "o"),
            "replication": 0 if self.is_dir else self.replication,
            "storagePolicy": 0,
            "type": "DIRECTORY" if self.is_dir else "FILE",
        }

    def mode_string(self) -> str:
        bits = "".join(ch if self.permission & (1 << (8 - i)) else "-" for i, ch in enumerate("rwxrwxrwx"))
        return ("d" if self.is_dir else "-") + bits


#: The requests are the shared records (tags ``node`` and ``op``; ``path`` is the HDFS path).
RequestRecord = Request


_ACCESS = {"READ": 4, "WRITE": 2, "EXECUTE": 1, "READ_EXECUTE": 5}


class FakeWebHDFS(FakeService):
    """The fake cluster: a namespace, a namenode listener and a datanode listener.

    Attributes that may be changed while it runs: ``anonymous_allowed``, ``required_headers``,
    ``proxy_users`` (real user -> users it may impersonate, ``"*"`` for anyone), ``groups`` (user ->
    groups), ``ls_limit`` (``dfs.ls.limit``), ``standby`` (every namenode op answers
    ``StandbyException``, as a standby namenode of an HA pair does) and ``gzip_reads``.

    Seeding: :meth:`put`, :meth:`mkdir`, :meth:`replace`, :meth:`delete`, :meth:`chmod`.
    Observing: ``requests`` (every :class:`RequestRecord`), :meth:`opens` (the datanode ranges),
    ``bytes_served`` / ``bytes_served_by_path``, ``max_active_reads`` (most simultaneous datanode
    reads, each counted until its body starts to go out), :meth:`reset_counters`. Faults:
    :meth:`stall`, :meth:`cut`, :meth:`replace_during_read`, :meth:`fail`. TLS: ``ca_path`` (PEM)
    and :meth:`client_cert_files`.
    """

    def __init__(
        self,
        *,
        tls: bool = False,
        require_client_cert: bool = False,
        anonymous_allowed: bool = True,
        required_headers: Mapping[str, str] | None = None,
        proxy_users: Mapping[str, Collection[str]] | None = None,
        groups: Mapping[str, Collection[str]] | None = None,
        ls_limit: int = 1000,
        standby: bool = False,
    ) -> None:
        super().__init__()
        self.tls, self.require_client_cert = tls, require_client_cert
        self.anonymous_allowed = anonymous_allowed
        self.required_headers: dict[str, str] = dict(required_headers or {})
        self.proxy_users: dict[str, Collection[str]] = dict(proxy_users or {})
        self.groups: dict[str, Collection[str]] = dict(groups or {})
        self.ls_limit, self.standby = ls_limit, standby
        #: Gzip datanode answers for clients that accept it, as a compressing gateway in front of
        #: the cluster (Knox, an nginx with ``gzip on``) does.
        self.gzip_reads = False
        self.bytes_served = 0
        self.bytes_served_by_path: dict[str, int] = {}
        self.active_reads = 0  # datanode OPEN responses whose body has not started to go out
        self.max_active_reads = 0
        self._lock = threading.RLock()
        self._next_id = ROOT_FILE_ID + 1
        self._last_time = 0
        now = self._now()
        self._root = _Inode(True, ROOT_FILE_ID, SUPERUSER, SUPERGROUP, 0o755, now, 0)
        self._tmp = Path(tempfile.mkdtemp(prefix="fake-webhdfs-"))
        self._servers: dict[Node, _Server] = {}
        self.ca: Any = None  # trustme.CA when tls
        self.ca_path: Path | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeWebHDFS:
        """Start both listeners (``requests``: ``r.node``, ``r.op``; ``r.path`` is the HDFS path)."""
        context = self._server_context() if self.tls else None
        for node in ("namenode", "datanode"):
            self._servers[node] = _Server(self, node, context)
            self._listeners.append(self._servers[node])
        return super().start()

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self._tmp, ignore_errors=True)

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def url(self) -> str:
        """The namenode's base URL, as ``HDFS_NAMENODE`` / ``hdfs.Client`` take it."""
        return self._servers["namenode"].url

    @property
    def datanode_url(self) -> str:
        return self._servers["datanode"].url

    @property
    def rpc_address(self) -> str:
        """What the namenode puts in ``namenoderpcaddress`` (its RPC address in a real cluster)."""
        return "127.0.0.1:8020"

    def _server_context(self) -> ssl.SSLContext:
        import trustme

        self.ca = trustme.CA()
        self.ca_path = self._tmp / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_path))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        if self.require_client_cert:
            self.ca.configure_trust(context)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def client_cert_files(self, name: str = "client") -> tuple[Path, Path]:
        """A client certificate signed by the fake's CA, as separate PEM files (``TLS_CERT``, ``TLS_KEY``)."""
        if self.ca is None:
            raise RuntimeError("client certificates need tls=True")
        cert = self.ca.issue_cert(f"{name}@example.com")
        cert_path, key_path = self._tmp / f"{name}.crt", self._tmp / f"{name}.key"
        cert_path.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        key_path.write_bytes(cert.private_key_pem.bytes())
        return cert_path, key_path

    # ------------------------------------------------------------------ seeding

    def _now(self) -> int:
        """Milliseconds since the epoch, strictly increasing so every change is visible."""
        with self._lock:
            self._last_time = max(int(time.time() * 1000), self._last_time + 1)
            return self._last_time

    def _new_id(self) -> int:
        with self._lock:
            self._next_id += 1
            return self._next_id - 1

    def mkdir(self, path: str, *, owner: str = SUPERUSER, group: str = SUPERGROUP, permission: int = 0o755) -> None:
        """``hdfs dfs -mkdir -p``: missing parents are created with the same owner and mode."""
        with self._lock:
            node = self._root
            for name in _components(path):
                child = node.children.get(name)
                if child is None:
                    now = self._now()
                    child = _Inode(True, self._new_id(), owner, group, permission, now, 0)
                    node.children[name] = child
                    node.mtime = now
                elif not child.is_dir:
                    raise ValueError(f"{path}: a parent is a file")
                node = child

    def put(
        self,
        path: str,
        data: bytes,
        *,
        owner: str = SUPERUSER,
        group: str = SUPERGROUP,
        permission: int = 0o644,
        replication: int = 1,
        block_size: int = DEFAULT_BLOCK_SIZE,
    ) -> None:
        """``hdfs dfs -put -f``: write a file (parents created), replacing any file already there.

        An overwrite creates a new inode, as HDFS does: new ``fileId``, new ``modificationTime``.
        """
        parent, name = posixpath.split(_normalize(path))
        if not name:
            raise ValueError("cannot put the root")
        with self._lock:
            self.mkdir(parent, owner=owner, group=group)
            directory = self._lookup(parent)
            assert directory is not None
            existing = directory.children.get(name)
            if existing is not None and existing.is_dir:
                raise ValueError(f"{path} is a directory")
            now = self._now()
            directory.children[name] = _Inode(
                False,
                self._new_id(),
                owner,
                group,
                permission,
                now,
                now,
                bytes(data),
                replication,
                block_size,
            )
            directory.mtime = now

    def replace(self, path: str, data: bytes) -> None:
        """Overwrite a file's content keeping its owner, group and mode (a new inode, like HDFS)."""
        with self._lock:
            inode = self._lookup(path)
            if inode is None or inode.is_dir:
                raise ValueError(f"{path} is not a file")
            self.put(
                path,
                data,
                owner=inode.owner,
                group=inode.group,
                permission=inode.permission,
                replication=inode.replication,
                block_size=inode.block_size,
            )

    def delete(self, path: str) -> None:
        """``hdfs dfs -rm -r``."""
        parent, name = posixpath.split(_normalize(path))
        with self._lock:
            directory = self._lookup(parent)
            if directory is None or name not in directory.children:
                raise FileNotFoundError(path)
            del directory.children[name]
            directory.mtime = self._now()

    def chmod(self, path: str, permission: int, *, owner: str | None = None, group: str | None = None) -> None:
        with self._lock:
            inode = self._lookup(path)
            if inode is None:
                raise FileNotFoundError(path)
            inode.permission = permission
            inode.owner = owner or inode.owner
            inode.group = group or inode.group

    def content(self, path: str) -> bytes:
        with self._lock:
            inode = self._lookup(path)
            if inode is None or inode.is_dir:
                raise FileNotFoundError(path)
            return inode.data

    def file_status(self, path: str) -> dict[str, Any]:
        """The FileStatus the namenode would answer (no permission checks)."""
        with self._lock:
            inode = self._lookup(path)
            if inode is None:
                raise FileNotFoundError(path)
            return inode.status("")

    def _lookup(self, path: str) -> _Inode | None:
        node = self._root
        for name in _components(path):
            if not node.is_dir or name not in node.children:
                return None
            node = node.children[name]
        return node

    # ------------------------------------------------------------------ faults and counters

    def stall(self, path: str | None, *, after: int = 0, seconds: float = 30.0, times: int = 1) -> Fault:
        """The datanode stops sending ``path`` after ``after`` body bytes for ``seconds`` (or until stop)."""
        return self._arm(Fault("stall", path, after, seconds=seconds, times=times, resume=True))

    def cut(self, path: str | None, *, after: int = 0, times: int = 1) -> Fault:
        """The datanode closes the connection after ``after`` body bytes (full Content-Length announced)."""
        return self._arm(Fault("cut", path, after, times=times))

    def replace_during_read(self, path: str, data: bytes, *, after: int = 0) -> Fault:
        """Overwrite ``path`` once the datanode has sent ``after`` bytes of it in one response.

        The response in flight keeps the old bytes; every later OPEN / GETFILESTATUS sees the new file
        (new length, ``modificationTime`` and ``fileId``).
        """
        return self._arm(Fault("replace", path, after, data=data))

    def fail(
        self,
        status: int,
        exception: str,
        message: str,
        *,
        java_class: str | None = None,
        node: Node = "namenode",
        op: str | None = None,
        path: str | None = None,
        times: int = 1,
    ) -> Fault:
        """Answer the next matching request(s) with a ``RemoteException`` (e.g. 403 RetriableException)."""
        error = RemoteError(status, exception, java_class or f"org.apache.hadoop.ipc.{exception}", message)
        where = {"node": node} if op is None else {"node": node, "op": op.upper()}
        return self._arm(Fault("error", path, error=error, times=times, where=where))

    def _arm(self, fault: Fault) -> Fault:
        if fault.path is not None:
            fault.path = _normalize(fault.path)
        if not fault.where:
            fault.where = {"node": "datanode", "op": "OPEN"}
        return self._faults.add(fault)

    def opens(self, path: str | None = None) -> list[RequestRecord]:
        """The datanode OPEN requests (each one a byte range), optionally for one path."""
        return [r for r in self._log.where(node="datanode", op="OPEN") if path is None or r.path == _normalize(path)]

    def reset_counters(self) -> None:
        self._log.clear()
        with self._lock:
            self.bytes_served = 0
            self.bytes_served_by_path.clear()
            self.max_active_reads = self.active_reads

    # ------------------------------------------------------------------ request handling

    def handle(self, handler: _Handler, node: Node) -> None:
        split = urlsplit(handler.path)
        query: dict[str, str] = {}
        for key, value in parse_qsl(split.query, keep_blank_values=True):
            query.setdefault(key, value)  # Jersey's @QueryParam takes the first value
        raw_op = query.get("op", "")
        path = unquote(split.path[len(PREFIX) :]) if split.path.startswith(PREFIX) else ""
        record = self._log.add(
            Request(
                handler.command,
                _normalize(path or "/"),
                split.query,
                dict(handler.headers),
                tags={"node": node, "op": raw_op.upper() or "NULL"},
            )
        )
        if not split.path.startswith(PREFIX):
            self._send_html(handler, 404, "Not Found")
            return
        try:
            if node == "namenode":
                self._namenode(handler, record, path)
            else:
                self._datanode(handler, record, path)
        except RemoteError as error:
            headers = {"Content-Type": "application/json"}
            if node == "datanode":
                headers = {"Content-Type": "application/json; charset=utf-8", "Connection": "close"}
            self._send(handler, error.status, headers, error.body(), hadoop_headers=node == "namenode")
        except _FilterError as refusal:
            self._send_html(handler, refusal.status, refusal.reason, refusal.headers)

    # namenode -------------------------------------------------------------

    def _namenode(self, handler: _Handler, record: RequestRecord, path: str) -> None:
        query = record.query
        self._authenticate(handler, query)
        op = _parse_op(handler.command, query.get("op"))
        user = self._effective_user(query)
        fault = self._faults.take(record.path, ("error",), node="namenode", op=op)
        if fault is not None and fault.error is not None:
            raise fault.error
        if self.standby:
            raise RemoteError(403, "StandbyException", "org.apache.hadoop.ipc.StandbyException", _STANDBY_MESSAGE)
        if handler.command != "GET":
            handler.discard_body()
            raise RemoteError(
                400,
                "UnsupportedOperationException",
                "java.lang.UnsupportedOperationException",
                f"{op} is not implemented by the fake WebHDFS (it is read-only)",
            )
        full = _validate_path(path)
        body: bytes
        if op == "GETFILESTATUS":
            inode = self._resolve(full, user)
            if inode is None:
                raise _not_found(f"File does not exist: {full}")
            body = _json({"FileStatus": inode.status("")})
        elif op == "LISTSTATUS":
            entries = self._listing(full, user, b"")
            lines = ",\n".join(_json(status).decode() for status in entries)
            body = ('{"FileStatuses":{"FileStatus":[\n' + lines + ("\n" if lines else "") + "]}}\n").encode()
        elif op == "LISTSTATUS_BATCH":
            start = query.get("startAfter", "").encode()
            entries = self._listing(full, user, start)
            page = entries[: self.ls_limit]
            listing = {
                "partialListing": {"FileStatuses": {"FileStatus": page}},
                "remainingEntries": len(entries) - len(page),
            }
            body = _json({"DirectoryListing": listing})
        elif op == "GETCONTENTSUMMARY":
            body = _json({"ContentSummary": self._summary(full, user)})
        elif op == "GETHOMEDIRECTORY":
            body = _json({"Path": f"/user/{user}"})
        elif op == "OPEN":
            location = self._open_redirect(full, user, query)
            if query.get("noredirect", "").lower() == "true":
                body = _json({"Location": location})
            else:
                headers = {"Location": location, "Content-Type": "application/octet-stream"}
                self._send(handler, 307, headers, b"", reason="Temporary Redirect")
                return
        elif op == "NULL":
            raise RemoteError(
                400,
                "UnsupportedOperationException",
                "java.lang.UnsupportedOperationException",
                "NULL is not supported",
            )
        else:
            raise RemoteError(
                400,
                "UnsupportedOperationException",
                "java.lang.UnsupportedOperationException",
                f"{op} is not implemented by the fake WebHDFS",
            )
        self._send(handler, 200, {"Content-Type": "application/json"}, body)

    def _authenticate(self, handler: _Handler, query: Mapping[str, str]) -> None:
        """Hadoop's AuthenticationFilter: runs before WebHDFS and refuses with HTML pages."""
        for name, value in self.required_headers.items():
            if handler.headers.get(name) != value:
                raise _FilterError(401, "Authentication required", {"WWW-Authenticate": "Negotiate"})
        if "user.name" not in query and not self.anonymous_allowed:
            raise _FilterError(403, "Anonymous requests are disallowed")

    def _effective_user(self, query: Mapping[str, str]) -> str:
        """``JspHelper.getUGI`` with security off: ``user.name`` (or dr.who), then ``doas``."""
        name = query.get("user.name", DEFAULT_WEB_USER)
        for param in ("user.name", "doas"):
            value = query.get(param)
            if value is not None and not _USER_PATTERN.match(value):
                raise _bad_param(
                    param, f'Invalid value: "{value}" does not belong to the domain {_USER_PATTERN.pattern}'
                )
        doas = query.get("doas")
        if doas is None:
            return name
        allowed = self.proxy_users.get(name, ())
        if "*" not in allowed and doas not in allowed:
            raise RemoteError(
                403,
                "SecurityException",
                "java.lang.SecurityException",
                "Failed to obtain user group information: org.apache.hadoop.security.authorize."
                f"AuthorizationException: User: {name} is not allowed to impersonate {doas}",
            )
        return doas

    def _open_redirect(self, full: str, user: str, query: Mapping[str, str]) -> str:
        offset = _long_param(query, "offset", 0, minimum=0)
        length = _long_param(query, "length", None, minimum=0)
        buffersize = _long_param(query, "buffersize", None, minimum=1)
        inode = self._resolve(full, user)
        if inode is None:
            raise _not_found(f"File {full} not found.")
        size = 0 if inode.is_dir else len(inode.data)
        if size > 0 and offset >= size:
            raise RemoteError(
                403,
                "IOException",
                "java.io.IOException",
                f"Offset={offset} out of the range [0, {size}); OPEN, path={full}",
            )
        if size > 0:
            self._check_access(user, full, inode, "READ")  # getBlockLocations
        auth = [(k, query[k]) for k in ("doas", "user.name") if k in query]
        params = [("buffersize", buffersize), ("length", length), ("offset", offset)]
        pairs = [("op", "OPEN"), *auth, ("namenoderpcaddress", self.rpc_address)]
        pairs += [(k, str(v)) for k, v in params if v is not None]
        return f"{self.datanode_url}{PREFIX}{quote(full)}?{urlencode(pairs)}"

    def _resolve(self, full: str, user: str) -> _Inode | None:
        """Look a path up checking EXECUTE on every ancestor (HDFS's traverse check)."""
        node, walked = self._root, ""
        for name in _components(full):
            if not node.is_dir:
                return None
            self._check_access(user, walked or "/", node, "EXECUTE")
            child = node.children.get(name)
            if child is None:
                return None
            node, walked = child, f"{walked}/{name}"
        return node

    def _check_access(self, user: str, path: str, inode: _Inode, access: str) -> None:
        groups = set(self.groups.get(user, ()))
        if user == SUPERUSER or SUPERGROUP in groups:
            return
        if user == inode.owner:
            bits = inode.permission >> 6
        elif inode.group in groups:
            bits = inode.permission >> 3
        else:
            bits = inode.permission
        wanted = _ACCESS[access]
        if bits & wanted != wanted:
            raise RemoteError(
                403,
                "AccessControlException",
                "org.apache.hadoop.security.AccessControlException",
                f'Permission denied: user={user}, access={access}, inode="{path}":'
                f"{inode.owner}:{inode.group}:{inode.mode_string()}",
            )

    def _listing(self, full: str, user: str, start_after: bytes) -> list[dict[str, Any]]:
        with self._lock:
            inode = self._resolve(full, user)
            if inode is None:
                raise _not_found(f"File {full} does not exist.")
            if not inode.is_dir:
                return [inode.status("")]
            self._check_access(user, full, inode, "READ_EXECUTE")
            names = sorted((n for n in inode.children if n.encode() > start_after), key=str.encode)
            return [inode.children[n].status(n) for n in names]

    def _summary(self, full: str, user: str) -> dict[str, Any]:
        with self._lock:
            inode = self._resolve(full, user)
            if inode is None:
                raise _not_found(f"File does not exist: {full}")
            dirs = files = length = consumed = 0
            stack = [(full, inode)]
            while stack:
                path, node = stack.pop()
                if node.is_dir:
                    self._check_access(user, path, node, "READ_EXECUTE")
                    dirs += 1
                    stack += [(posixpath.join(path, n), c) for n, c in node.children.items()]
                else:
                    files += 1
                    length += len(node.data)
                    consumed += len(node.data) * node.replication
            return {
                "directoryCount": dirs,
                "ecPolicy": "",
                "fileCount": files,
                "length": length,
                "quota": -1,
                "spaceConsumed": consumed,
                "spaceQuota": -1,
                "typeQuota": {},
            }

    # datanode -------------------------------------------------------------

    def _datanode(self, handler: _Handler, record: RequestRecord, path: str) -> None:
        query = record.query
        if handler.command != "GET" or record.op != "OPEN":
            handler.discard_body()
            raise _bad_argument(f"Invalid operation {query.get('op')}")
        user = query.get("doas") or query.get("user.name") or DEFAULT_WEB_USER  # trusted, as in Hadoop
        fault = self._faults.take(record.path, ("error",), node="datanode", op="OPEN")
        if fault is not None and fault.error is not None:
            raise fault.error
        if "namenoderpcaddress" not in query:
            raise _bad_argument("java.net.UnknownHostException: null")
        offset = _long_param(query, "offset", 0, minimum=0, datanode=True)
        length = _long_param(query, "length", -1, minimum=0, datanode=True)
        buffersize = _long_param(query, "buffersize", 65536, minimum=1, datanode=True)
        full = _validate_path(path)
        with self._lock:
            inode = self._resolve(full, user)
            if inode is None:
                raise _not_found(f"File does not exist: {full}")
            if inode.is_dir:
                raise _not_found(f"Path is not a file: {full}")
            self._check_access(user, full, inode, "READ")
            data = inode.data  # immutable snapshot: an overwrite does not change this response
        if offset > len(data):
            raise RemoteError(403, "EOFException", "java.io.EOFException", "Cannot seek after EOF")
        count = len(data) - offset if length is None or length < 0 else min(length, len(data) - offset)
        headers = {
            "Access-Control-Allow-Methods": "GET",
            "Access-Control-Allow-Origin": "*",
            "Content-Type": "application/octet-stream",
            "Connection": "close",
            "Content-Length": str(count),
        }
        if self.gzip_reads and "gzip" in handler.headers.get("Accept-Encoding", ""):
            body = gzip.compress(data[offset : offset + count])
            handler.start_response(200, {**headers, "Content-Encoding": "gzip", "Content-Length": str(len(body))})
            handler.wfile.write(body)
            return
        handler.start_response(200, headers)
        with self._lock:
            self.active_reads += 1
            self.max_active_reads = max(self.max_active_reads, self.active_reads)
        ended = False

        def end() -> None:
            # Active until the body starts to go out, not until this thread is done: after its last
            # write the client can have the whole body, and start its next read, before this thread
            # runs again (a client holding 2 slots was seen with 3 reads "active").
            nonlocal ended
            with self._lock:
                if not ended:
                    ended = True
                    self.active_reads -= 1

        try:
            self._stream(handler, record.path, data, offset, count, buffersize, begun=end)
        finally:
            end()

    def _stream(
        self,
        handler: _Handler,
        path: str,
        data: bytes,
        offset: int,
        count: int,
        chunk: int,
        begun: Callable[[], None] | None = None,
    ) -> None:
        faults = self._faults.pending(path, ("stall", "cut", "replace"), node="datanode", op="OPEN")[:1]

        def counted(n: int) -> None:
            with self._lock:
                self.bytes_served += n
                self.bytes_served_by_path[path] = self.bytes_served_by_path.get(path, 0) + n

        handler.stream(
            memoryview(data)[offset : offset + count],
            faults,
            claim=self._faults.claim,
            replace=lambda fault: self.replace(path, fault.data),
            wake=self._stopping,
            chunk=max(1, min(chunk, 1 << 20)),
            counted=counted,
            begun=begun,
        )

    # responses ------------------------------------------------------------

    def _send(
        self,
        handler: _Handler,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
        *,
        reason: str | None = None,
        hadoop_headers: bool = True,
    ) -> None:
        all_headers = dict(headers)
        if hadoop_headers:  # what Hadoop's HttpServer2 adds to every namenode answer
            now = formatdate(usegmt=True)
            all_headers.update(
                {
                    "Cache-Control": "no-cache",
                    "Expires": now,
                    "Pragma": "no-cache",
                    "X-Content-Type-Options": "nosniff",
                    "X-FRAME-OPTIONS": "SAMEORIGIN",
                    "X-XSS-Protection": "1; mode=block",
                }
            )
        all_headers["Content-Length"] = str(len(body))
        handler.start_response(status, all_headers, reason)
        with contextlib.suppress(OSError):
            handler.wfile.write(body)

    def _send_html(self, handler: _Handler, status: int, reason: str, headers: Mapping[str, str] | None = None) -> None:
        """A Jetty error page, as ``HttpServletResponse.sendError`` renders it."""
        page = (
            '<html>\n<head>\n<meta http-equiv="Content-Type" content="text/html;charset=utf-8"/>\n'
            f"<title>Error {status} {reason}</title>\n</head>\n<body><h2>HTTP ERROR {status}</h2>\n"
            f"<p>Problem accessing {urlsplit(handler.path).path}. Reason:\n<pre>    {reason}</pre></p>\n"
            "</body>\n</html>\n"
        )
        all_headers = {"Content-Type": "text/html;charset=utf-8", **(headers or {})}
        self._send(handler, status, all_headers, page.encode(), reason=reason)


# ---------------------------------------------------------------------- helpers


def _components(path: str) -> list[str]:
    return [part for part in path.split("/") if part]


def _normalize(path: str) -> str:
    return "/" + "/".join(_components(path))


def _validate_path(path: str) -> str:
    """``DFSUtil.isValidName``: no ``.``, ``..`` or ``:`` components."""
    full = _normalize(path)
    if any(part in (".", "..") or ":" in part for part in _components(path)):
        raise RemoteError(
            400,
            "InvalidPathException",
            "org.apache.hadoop.fs.InvalidPathException",
            f"Invalid path name Invalid file name: {path}",
        )
    return full


def _parse_op(method: str, raw: str | None) -> str:
    if raw is None:
        return "NULL"
    op = raw.upper()
    if method == "GET" and op not in _GET_OPS:
        enum = _OP_ENUMS["GET"]
        raise _bad_param("op", f"No enum constant org.apache.hadoop.hdfs.web.resources.{enum}.Op.{op}")
    return op


@overload
def _long_param(query: Mapping[str, str], name: str, default: int, *, minimum: int, datanode: bool = False) -> int: ...
@overload
def _long_param(
    query: Mapping[str, str], name: str, default: None, *, minimum: int, datanode: bool = False
) -> int | None: ...
def _long_param(
    query: Mapping[str, str], name: str, default: int | None, *, minimum: int, datanode: bool = False
) -> int | None:
    """A ``LongParam``: radix-10, at least ``minimum``; absent (or ``null``) means the default."""
    raw = query.get(name)
    if raw is None or raw == "" or raw == "null":
        return default
    try:
        value = int(raw, 10)
    except ValueError:
        reason = f'Failed to parse "{raw}" as a radix-10 long integer.'
    else:
        if value >= minimum:
            return value
        reason = f"Invalid parameter range: {name} = {value} < {minimum}"
    if datanode:  # the datanode's ParameterParser raises the bare IllegalArgumentException
        raise _bad_argument(reason)
    raise _bad_param(name, reason)


class _Server(FakeServer):
    def __init__(self, fake: FakeWebHDFS, node: Node, context: ssl.SSLContext | None) -> None:
        self.node = node
        super().__init__(_Handler, fake, tls=context, start=False, log=fake._log)


class _Handler(FakeHandler):
    server_version = "Jetty(9.4.53.v20231009)"
    sys_version = ""
    timeout = 30
    server: _Server

    def _dispatch(self) -> None:
        self.owner.handle(self, self.server.node)

    do_GET = do_PUT = do_POST = do_DELETE = _dispatch

    def version_string(self) -> str:
        return self.server_version

    def discard_body(self) -> None:
        self.read_body()

    def start_response(self, status: int, headers: Mapping[str, str], reason: str | None = None) -> None:
        headers = dict(headers)
        if self.headers.get("Connection", "").lower() == "close":  # as Jetty: a close asked for is announced
            headers.setdefault("Connection", "close")
        if headers.get("Connection", "").lower() == "close":
            self.close_connection = True
        self.send(status, headers, reason=reason)


# ---------------------------------------------------------------------- fixtures


@pytest.fixture
def fake_webhdfs() -> Iterator[FakeWebHDFS]:
    """A running plain-HTTP fake cluster (``.url`` is the namenode); stopped after the test."""
    with FakeWebHDFS() as server:
        yield server


@pytest.fixture
def fake_webhdfs_tls() -> Iterator[FakeWebHDFS]:
    """The fake over HTTPS with its own trustme CA (``.ca_path``); no client certificate required."""
    with FakeWebHDFS(tls=True) as server:
        yield server


@pytest.fixture
def make_fake_webhdfs() -> Iterator[Callable[..., FakeWebHDFS]]:
    """A factory for fakes with options (``tls``, ``require_client_cert``...); all stopped after the test."""
    servers: list[FakeWebHDFS] = []

    def make(**options: Any) -> FakeWebHDFS:
        server = FakeWebHDFS(**options).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()
