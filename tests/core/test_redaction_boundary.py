"""Secrets stay out of everything a user reads, even from a provider that never redacts.

Redaction is a property of the boundaries, not of each provider: an error redacts its message
and hint when made, every record of the package's loggers (``storage_initializer*``) is
redacted when made, and the command redacts its lines, the termination log and the record
file. A deliberately careless plugin (it logs and raises the URI with its password and the
token it read, and logs a traceback holding both) proves it through the real command (loaded
by entry point like any plugin) and through the Python API with the application's own
logging handler; real providers prove it on failing downloads. A source scan keeps providers
from growing ``redact(`` calls again.
"""

from __future__ import annotations

import ast
import json
import logging
import pickle
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from storage_initializer.errors import AccessDeniedError, NotFoundError, StorageInitializerError
from storage_initializer.redact import MASK, RedactFilter, register_secret
from storage_initializer.registry import Registry
from storage_initializer.runner import download
from storage_initializer.settings import Settings
from tests.cli import run_cli
from tests.unreachable import INVALID_HOST

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "hunter2-userinfo-pw"
TOKEN = "tok-0f1e2d3c4b5a69788796"
URI = f"leaky://model-reader:{PASSWORD}@store.example/model"
SECRETS = (PASSWORD, TOKEN)

# A plugin that never redacts: the boundary has to.
LEAKY_SOURCE = textwrap.dedent(
    """
    import logging

    from storage_initializer.errors import AccessDeniedError
    from storage_initializer.provider import Provider, UriFormat


    class LeakyProvider(Provider):
        uri_formats = (UriFormat(prefix="leaky://"),)

        def list(self, uri):
            token = self.env.get("LEAKY_API_TOKEN", "")
            logging.getLogger("storage_initializer_leaky").warning("listing %s with token %s", uri, token)
            logging.getLogger("storage_initializer.leaky").warning("sending Authorization: Bearer " + token)
            try:
                raise ValueError(f"inner failure for {uri} with {token}")
            except ValueError:
                logging.getLogger("storage_initializer_leaky").exception("while listing %s", uri)
            raise AccessDeniedError(f"{uri} refused the token {token}", hint=f"is {token} still valid?")
            yield

        def open_range(self, uri, obj, start, end):
            raise AssertionError("nothing is listed")
    """
)
namespace: dict[str, object] = {}
exec(compile(LEAKY_SOURCE, "storage_initializer_leaky.py", "exec"), namespace)  # the same class in-process
LeakyProvider: Any = namespace["LeakyProvider"]


def _assert_clean(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{where} shows a secret: {text}"


@pytest.fixture
def leaky_plugin(tmp_path: Path) -> Path:
    """The careless plugin as an installed distribution (a module and its dist-info) on PYTHONPATH."""
    site = tmp_path / "site"
    info = site / "storage_initializer_leaky-0.1.0.dist-info"
    info.mkdir(parents=True)
    (site / "storage_initializer_leaky.py").write_text(LEAKY_SOURCE)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: storage-initializer-leaky\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(
        "[storage_initializer.providers]\nleaky = storage_initializer_leaky:LeakyProvider\n"
    )
    return site


def test_a_careless_plugin_leaks_nothing_through_the_command(leaky_plugin: Path, tmp_path: Path) -> None:
    record, termination = tmp_path / "record.json", tmp_path / "termination-log"
    env = {
        "PYTHONPATH": str(leaky_plugin),
        "LEAKY_API_TOKEN": TOKEN,
        "STORAGE_INITIALIZER_TERMINATION_LOG": str(termination),
    }
    result = run_cli(["-v", "--record", str(record), URI, str(tmp_path / "out")], env)
    assert result.returncode == 1, result.stderr
    assert f"listing leaky://{MASK}@store.example/model with token {MASK}" in result.stderr
    assert f"leaky://{MASK}@store.example/model refused the token {MASK} (is {MASK} still valid?)" in result.stderr
    assert "inner failure for" in result.stderr  # the traceback is there, masked
    _assert_clean(result.stderr, "stderr")
    assert "refused the token" in termination.read_text()
    _assert_clean(termination.read_text(), "the termination log")
    assert record.exists()
    _assert_clean(record.read_text(), "the record")


class _Collect(logging.Handler):
    """An application's own handler, with a plain formatter (no redaction of its own)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def app_handler() -> Iterator[_Collect]:
    handler, root = _Collect(), logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_a_careless_plugin_leaks_nothing_through_the_python_api(tmp_path: Path, app_handler: _Collect) -> None:
    settings = Settings(env={"LEAKY_API_TOKEN": TOKEN}, heartbeat_seconds=60)
    (result,) = download([(URI, str(tmp_path / "out"))], settings, Registry.from_classes({"leaky": LeakyProvider}))
    error = result.error
    assert isinstance(error, AccessDeniedError)
    assert str(error) == f"leaky://{MASK}@store.example/model refused the token {MASK} (is {MASK} still valid?)"
    for text in (str(error), repr(error), error.message, str(error.hint), str(error.args), result.uri):
        _assert_clean(text, "the error")
    logged = "\n".join(app_handler.lines)
    assert f"storage_initializer_leaky WARNING listing leaky://{MASK}@store.example/model with token {MASK}" in logged
    assert f"storage_initializer.leaky WARNING sending Authorization: {MASK}" in logged
    assert "inner failure for" in logged  # the traceback, masked
    _assert_clean(logged, "the application's log")


def test_an_error_redacts_its_message_and_hint_whenever_they_are_set() -> None:
    register_secret(TOKEN)
    error = NotFoundError(f"{URI} not found", hint=f"token {TOKEN}")
    assert error.message == f"leaky://{MASK}@store.example/model not found" and error.hint == f"token {MASK}"
    error.message = f"{error.message} via https://u:{PASSWORD}@proxy.example"
    error.hint = f"{error.hint}; check {TOKEN}"
    _assert_clean(f"{error} {error!r} {error.args}", "the error")
    copy = pickle.loads(pickle.dumps(error))  # errors cross process and thread boundaries
    assert str(copy) == str(error) and type(copy) is NotFoundError
    grammar = "expected https://[USER@]HOST[:PORT]/PATH.git"  # a hint's grammar is not userinfo
    assert StorageInitializerError("bad URI", hint=grammar).hint == grammar
    later = "registered-after-the-error-was-made"
    late = StorageInitializerError(f"found {later}")
    register_secret(later)
    assert str(late) == f"found {MASK}"  # str() redacts again


def test_the_filter_masks_records_of_any_logger_it_is_added_to() -> None:
    register_secret(TOKEN)
    record = logging.LogRecord("hdfs.client", logging.ERROR, __file__, 1, "GET %s", (f"{URI}?t={TOKEN}",), None)
    assert RedactFilter().filter(record) is True
    assert record.getMessage() == f"GET leaky://{MASK}@store.example/model?t={MASK}"


# -- real providers, failing, with a password in the URI and a registered token -----------------------
REAL = {
    "http": (
        f"http://reader:{PASSWORD}@{INVALID_HOST}/model.bin",
        {f"{INVALID_HOST}-headers": json.dumps({"Authorization": f"Bearer {TOKEN}"})},
    ),
    "git": (f"http://reader:{PASSWORD}@{INVALID_HOST}/org/model.git", {"GIT_TOKEN": TOKEN}),
    "hf": ("hf://acme/model", {"HF_ENDPOINT": f"http://reader:{PASSWORD}@{INVALID_HOST}", "HF_TOKEN": TOKEN}),
    "model-registry": (f"model-registry://{INVALID_HOST}/iris/v1", {"MODEL_REGISTRY_TOKEN": TOKEN}),
}


@pytest.mark.parametrize("name", REAL)
def test_failing_real_providers_leak_nothing(name: str, tmp_path: Path) -> None:
    uri, env = REAL[name]
    termination, record = tmp_path / "termination-log", tmp_path / "record.json"
    env = {**env, "STORAGE_INITIALIZER_TERMINATION_LOG": str(termination), "STORAGE_INITIALIZER_RETRIES": "0"}
    result = run_cli(["-v", "--record", str(record), uri, str(tmp_path / "out")], env)
    assert result.returncode == 1 and "DNS name" in termination.read_text(), result.stderr
    for text, where in ((result.stderr, "stderr"), (termination.read_text(), "termination log")):
        _assert_clean(text, where)
    if record.exists():
        _assert_clean(record.read_text(), "the record")


# -- providers do not redact: the boundary does ----------------------------------------------------
def _redact_calls(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(), str(path))
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and (
            (isinstance(node.func, ast.Name) and node.func.id == "redact")
            or (isinstance(node.func, ast.Attribute) and node.func.attr == "redact")
        )
    ]


def test_providers_leave_redaction_to_the_boundary() -> None:
    """Errors and log records are redacted where they leave: a provider that calls ``redact(``
    spreads a rule that lives in one place (register the secrets it reads with register_secret)."""
    sources = [
        path
        for base in (ROOT / "providers", ROOT / "examples")
        for path in base.rglob("*.py")
        if not {"build", ".venv", "__pycache__"} & set(path.relative_to(base).parts)
    ]
    assert len(sources) > 20
    offenders = {str(path.relative_to(ROOT)): lines for path in sources if (lines := _redact_calls(path))}
    assert offenders == {}
