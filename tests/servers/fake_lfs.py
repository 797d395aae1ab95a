"""A small Git LFS server: the batch API and the ``basic`` transfer adapter.

Implements what git-lfs' ``docs/api/batch.md`` and ``docs/api/basic-transfers.md``
specify, and nothing more:

* ``POST <repo>.git/info/lfs/objects/batch`` with ``Accept`` and ``Content-Type``
  ``application/vnd.git-lfs+json`` (406 without that ``Accept``); ``operation``
  ``download`` answers each object with a ``download`` action (``href``, a
  ``header`` carrying a per-server token, ``expires_in``) or a per-object error
  ``{"code": 404}``; ``upload`` answers an ``upload`` action, or no ``actions``
  when the server already holds the object.
* ``GET /lfs/objects/<oid>`` (the action's ``href``): the object, with single
  byte ranges (206 + ``Content-Range``, 416); 401 without the action's header.
* ``PUT /lfs/objects/<oid>``: stores the body if its sha256 is the oid (400 otherwise).

It is mounted by :mod:`tests.servers.git_server` on the git server's own origin
(as GitHub, GitLab and Gitea do), behind the same repository authentication for
the batch endpoint. ``test_git.py`` proves it faithful by pushing to it and
cloning from it with the real ``git-lfs`` client. ``objects[oid]`` can be
replaced to simulate a corrupted store.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any

from tests.servers.base import UNSATISFIABLE, FakeHandler, content_range, parse_range

MEDIA_TYPE = "application/vnd.git-lfs+json"
BATCH_PATH = re.compile(r"^/(?P<repo>.+\.git)/info/lfs/objects/batch$")
OBJECT_PATH = re.compile(r"^/lfs/objects/(?P<oid>[0-9a-f]{64})$")


@dataclass
class LfsStore:
    """The LFS objects of every repository on one server, by oid."""

    objects: dict[str, bytes] = field(default_factory=dict)
    token: str = field(default_factory=lambda: secrets.token_hex(8))
    batch_requests: list[dict[str, Any]] = field(default_factory=list)
    downloads: list[tuple[str, str | None]] = field(default_factory=list)  # (oid, Range header)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Where download/upload hrefs point (another server sharing this store); default: the git server.
    href_base: str | None = None
    #: Answer this many object downloads with 401 (an expired href), then serve normally.
    expired_times: int = 0

    def add(self, data: bytes) -> str:
        oid = hashlib.sha256(data).hexdigest()
        self.objects[oid] = data
        return oid

    # -- request handling (called by the git server's handler) ------------------------
    def handles(self, path: str) -> bool:
        return bool(BATCH_PATH.match(path) or OBJECT_PATH.match(path))

    def is_batch(self, path: str) -> bool:
        return bool(BATCH_PATH.match(path))

    def handle(self, handler: FakeHandler, path: str, body: bytes, base_url: str) -> None:
        if BATCH_PATH.match(path):
            self._batch(handler, body, base_url)
            return
        match = OBJECT_PATH.match(path)
        assert match is not None
        oid = match["oid"]
        if handler.headers.get("Authorization") != f"RemoteAuth {self.token}":
            _send(handler, 401, b"missing or wrong action header", "text/plain")
        elif handler.command == "PUT":
            if hashlib.sha256(body).hexdigest() != oid:
                _send(handler, 400, b"content does not match the oid", "text/plain")
                return
            with self.lock:
                self.objects[oid] = body
            _send(handler, 200, b"", "text/plain")
        elif handler.command == "GET":
            with self.lock:
                expired, self.expired_times = self.expired_times > 0, max(0, self.expired_times - 1)
            if expired:
                _send(handler, 401, b"the link has expired", "text/plain")
                return
            self._download(handler, oid)
        else:
            _send(handler, 405, b"", "text/plain")

    def _batch(self, handler: FakeHandler, body: bytes, base_url: str) -> None:
        if handler.command != "POST":
            _send_json(handler, 405, {"message": "use POST"})
            return
        if MEDIA_TYPE not in (handler.headers.get("Accept") or ""):
            _send_json(handler, 406, {"message": f"Accept must be {MEDIA_TYPE}"})
            return
        try:
            request = json.loads(body)
            operation = request["operation"]
            wanted = [(str(o["oid"]), int(o["size"])) for o in request["objects"]]
        except (ValueError, KeyError, TypeError):
            _send_json(handler, 422, {"message": "malformed batch request"})
            return
        with self.lock:
            self.batch_requests.append(request)
        if operation not in ("download", "upload") or "basic" not in request.get("transfers", ["basic"]):
            _send_json(handler, 422, {"message": "unsupported operation or transfer"})
            return
        action = {"header": {"Authorization": f"RemoteAuth {self.token}"}, "expires_in": 3600}
        answers = []
        for oid, size in wanted:
            entry: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            href = f"{self.href_base or base_url}/lfs/objects/{oid}"
            if operation == "download":
                if oid in self.objects:
                    entry["actions"] = {"download": {"href": href, **action}}
                else:
                    entry["error"] = {"code": 404, "message": "Object does not exist"}
            elif oid not in self.objects:
                entry["actions"] = {"upload": {"href": href, **action}}
            answers.append(entry)
        _send_json(handler, 200, {"transfer": "basic", "objects": answers, "hash_algo": "sha256"})

    def _download(self, handler: FakeHandler, oid: str) -> None:
        data = self.objects.get(oid)
        wanted = handler.headers.get("Range")
        with self.lock:
            self.downloads.append((oid, wanted))
        if data is None:
            _send(handler, 404, b"no such object", "text/plain")
            return
        found = parse_range(wanted, len(data))
        if found is None:
            _send(handler, 200, data, "application/octet-stream")
        elif found == UNSATISFIABLE:
            _send(handler, 416, b"", "text/plain", {"Content-Range": f"bytes */{len(data)}"})
        else:
            start, end = found
            headers = {"Content-Range": content_range(start, end, len(data))}
            _send(handler, 206, data[start:end], "application/octet-stream", headers)


def _send(
    handler: FakeHandler, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None
) -> None:
    handler.send(status, {"Content-Type": content_type, **(headers or {})}, data)


def _send_json(handler: FakeHandler, status: int, payload: dict[str, Any]) -> None:
    _send(handler, status, json.dumps(payload).encode(), MEDIA_TYPE)
