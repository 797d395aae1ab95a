"""The shared base of the fakes: ranges, the request log and faults, seen by a real client."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from tests.servers.base import UNSATISFIABLE, FakeHandler, FakeService, Fault, parse_range

DATA = bytes(range(256)) * 40  # 10240 bytes


class _Handler(FakeHandler):
    def do_GET(self) -> None:
        service: _Store = self.owner
        status_fault = service._faults.take(self.path, ("status",))
        if status_fault is not None:
            self.record(status_fault.status)
            self.send(status_fault.status, {"Retry-After": status_fault.retry_after or "0"})
            return
        record = self.record(200, len(DATA), kind="file")
        self.send(200, {"Content-Length": str(len(DATA))})
        record.body_bytes = self.stream(DATA, service._faults.pending(self.path), claim=service._faults.claim)


class _Store(FakeService):
    def __init__(self) -> None:
        super().__init__()
        self.server = self._listen(_Handler)


@pytest.fixture
def store() -> Iterator[_Store]:
    with _Store() as running:
        yield running


@pytest.mark.parametrize(
    ("header", "ignore", "strict"),
    [
        (None, None, None),
        ("bytes=0-9", (0, 10), (0, 10)),
        ("bytes=10-", (10, 100), (10, 100)),
        ("bytes=-5", (95, 100), (95, 100)),
        ("bytes=90-200", (90, 100), (90, 100)),
        ("bytes=100-", UNSATISFIABLE, UNSATISFIABLE),
        ("bytes=-0", UNSATISFIABLE, UNSATISFIABLE),
        ("bytes=0-1,5-6", None, UNSATISFIABLE),
        ("items=0-1", None, UNSATISFIABLE),
        ("bytes=5-2", None, UNSATISFIABLE),
    ],
)
def test_parse_range(header: str | None, ignore: object, strict: object) -> None:
    assert parse_range(header, 100) == ignore
    assert parse_range(header, 100, malformed="unsatisfiable") == strict


def test_requests_are_logged_with_what_the_fake_knows(store: _Store) -> None:
    response = requests.get(f"{store.server.url}/a%20b?x=1&x=2", headers={"Range": "bytes=0-"}, timeout=5)
    assert response.content == DATA
    (record,) = store.requests
    assert (record.method, record.path, record.query, record.raw_query) == ("GET", "/a b", {"x": "1"}, "x=1&x=2")
    assert record.range == record.header("range") == "bytes=0-"
    assert (record.kind, record.status, record.body_bytes) == ("file", 200, len(DATA))


def test_status_fault_answers_the_next_requests_then_serves(store: _Store) -> None:
    store._faults.add(Fault("status", "/f", status=503, retry_after="2", times=2))
    answers = [requests.get(f"{store.server.url}/f", timeout=5) for _ in range(3)]
    assert [a.status_code for a in answers] == [503, 503, 200]
    assert answers[0].headers["Retry-After"] == "2"


def test_cut_fault_fires_once_after_its_bytes(store: _Store) -> None:
    fault = store._faults.add(Fault("cut", "/f", after_bytes=1000))
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        _ = requests.get(f"{store.server.url}/f", timeout=5).content
    assert fault.fired == 1 and fault.times == 0
    assert requests.get(f"{store.server.url}/f", timeout=5).content == DATA


def test_stall_fault_holds_the_body_and_a_short_body_leaves_a_fault_armed(store: _Store) -> None:
    store._faults.add(Fault("stall", "/f", after_bytes=len(DATA) + 1, seconds=30))  # never reached
    assert requests.get(f"{store.server.url}/f", timeout=5).content == DATA
    assert [f.times for f in store._faults] == [1]
    store._faults.clear()
    store._faults.add(Fault("stall", "/f", after_bytes=100, seconds=30))
    with pytest.raises(requests.exceptions.ConnectionError):
        _ = requests.get(f"{store.server.url}/f", timeout=(5, 0.3)).content


def test_corrupt_fault_sends_zeros_of_the_same_length(store: _Store) -> None:
    store._faults.add(Fault("corrupt", "/f"))
    assert requests.get(f"{store.server.url}/f", timeout=5).content == bytes(len(DATA))
