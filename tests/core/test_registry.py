"""Provider selection: precedence, ties, forcing, broken plugins, resolvers."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from importlib.metadata import EntryPoint
from typing import IO, ClassVar

import pytest

from storage_initializer.errors import ProviderError, ProviderUnavailableError
from storage_initializer.provider import (
    Plugin,
    Provider,
    ProviderContext,
    RemoteObject,
    Resolution,
    Resolver,
    UriFormat,
)
from storage_initializer.registry import GROUP, ProviderEntry, Registry, resolve_chain


class _Base(Provider):
    def list(self, uri: str) -> Iterator[RemoteObject]:
        yield RemoteObject("x", 0)

    def open_range(self, uri: str, obj: RemoteObject, start: int, end: int | None) -> AbstractContextManager[IO[bytes]]:
        raise NotImplementedError


class Generic(_Base):
    uri_formats = (UriFormat(prefix="https://"),)
    fallback = True


class Blob(_Base):
    uri_formats = (UriFormat(regex=r"https://(.+?)\.blob\.core\.windows\.net/(.+)"),)


class ShortPrefix(_Base):
    uri_formats = (UriFormat(prefix="s3://"),)


class LongPrefix(_Base):
    uri_formats = (UriFormat(prefix="s3://special-"),)


class RegexS3(_Base):
    uri_formats = (UriFormat(regex=r"^s3://"),)


class Twin(_Base):
    uri_formats = (UriFormat(prefix="s3://"),)


def _registry(**classes: type[Plugin]) -> Registry:
    return Registry.from_classes(classes)


def test_specific_provider_beats_fallback_even_with_a_regex() -> None:
    registry = _registry(http=Generic, azure=Blob)
    assert registry.find("https://acct.blob.core.windows.net/c/model").name == "azure"
    assert registry.find("https://example.com/model.bin").name == "http"


def test_prefix_beats_regex_and_longer_prefix_wins() -> None:
    registry = _registry(short=ShortPrefix, long=LongPrefix, regex=RegexS3)
    assert registry.find("s3://special-bucket/m").name == "long"
    assert registry.find("s3://bucket/m").name == "short"


def test_tie_is_an_error_naming_both_and_the_setting() -> None:
    registry = _registry(a=ShortPrefix, b=Twin)
    with pytest.raises(ProviderError) as info:
        registry.find("s3://bucket/m")
    text = str(info.value)
    assert "a (prefix s3://)" in text and "b (prefix s3://)" in text
    assert "STORAGE_INITIALIZER_PROVIDER=" in text
    assert registry.find("s3://bucket/m", forced="b").name == "b"


def test_unknown_scheme_is_named_with_the_closest_known_one() -> None:
    registry = _registry(short=ShortPrefix, azure=Blob)
    with pytest.raises(ProviderError) as info:
        registry.find("ftp://host/file")
    assert str(info.value).startswith("unknown URI scheme 'ftp://' in ftp://host/file (")
    assert "storage-initializer --list-providers shows the URI formats" in str(info.value)
    with pytest.raises(ProviderError, match=r"did you mean s3://\?"):
        registry.find("s4://bucket/key")


def test_forcing_an_unknown_provider_is_an_error() -> None:
    with pytest.raises(ProviderError, match="names no installed provider"):
        _registry(short=ShortPrefix).find("s3://b/k", forced="nope")


def test_broken_plugin_is_reported_and_does_not_break_others() -> None:
    broken = ProviderEntry("broken", EntryPoint("broken", "no_such_module_xyz:Provider", GROUP))
    not_a_provider = ProviderEntry("odd", EntryPoint("odd", "json:dumps", GROUP))
    registry = Registry([broken, not_a_provider, ProviderEntry("short", None, cls=ShortPrefix)])
    assert registry.find("s3://b/k").name == "short"
    assert {e.name for e in registry.broken()} == {"broken", "odd"}
    assert "ModuleNotFoundError" in (broken.error or "")
    with pytest.raises(ProviderError) as info:
        registry.find("ftp://x/y")
    assert "broken" in str(info.value) and "pip install" in str(info.value)
    with pytest.raises(ProviderUnavailableError):
        registry.find("ftp://x/y", forced="broken")


class NeedsMissingModule(_Base):
    uri_formats = (UriFormat(prefix="needs://"),)
    requires: ClassVar = ("no_such_sdk_module_abc",)


def test_missing_sdk_gives_an_install_hint() -> None:
    with pytest.raises(ProviderUnavailableError, match="pip install no_such_sdk_module_abc"):
        _registry(needs=NeedsMissingModule).find("needs://x")


class Alias(Resolver):
    """Resolves alias://NAME to s3://bucket/NAME, with an environment overlay (no list/open_range)."""

    uri_formats = (UriFormat(prefix="alias://"),)

    def resolve(self, uri: str) -> Resolution:
        return Resolution("s3://bucket/" + uri[len("alias://") :], env={"FROM_ALIAS": "1"})


class Loop(_Base):
    """A provider that resolves (the form that predates :class:`Resolver`)."""

    uri_formats = (UriFormat(prefix="loop://"),)

    def resolve(self, uri: str) -> str:
        return "loop2://x" if uri.startswith("loop://") else "loop://x"


class Loop2(Loop):
    uri_formats = (UriFormat(prefix="loop2://"),)


def test_resolvers_are_followed_with_their_environment() -> None:
    registry = _registry(alias=Alias, short=ShortPrefix)
    envs: list[dict[str, str]] = []

    def make(entry: ProviderEntry, overlay: Mapping[str, str]) -> Plugin:
        assert entry.cls is not None
        envs.append(dict(overlay))
        return entry.cls(ProviderContext(env=dict(overlay)))

    provider, uri, chain = resolve_chain(registry, "alias://iris", make)
    assert isinstance(provider, ShortPrefix)
    assert uri == "s3://bucket/iris"
    assert chain == ["alias://iris", "s3://bucket/iris"]
    assert provider.env["FROM_ALIAS"] == "1"


def test_resolver_loops_are_refused() -> None:
    registry = _registry(loop=Loop, loop2=Loop2)
    with pytest.raises(ProviderError, match="loops"):
        resolve_chain(registry, "loop://x", lambda e, o: e.cls(ProviderContext()))  # type: ignore[misc]


def test_the_providers_index_spares_importing_every_provider(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the index the image writes, finding the provider of a URI imports that provider only;
    an index that does not describe the installed entry points, or a stale one, is not trusted."""
    import json
    from pathlib import Path

    from storage_initializer import registry as registry_module

    index = Path(str(tmp_path)) / "providers-index.json"
    monkeypatch.setattr(registry_module, "INDEX_PATH", str(index))
    assert registry_module.write_index(str(index)) >= 3  # the installed built-ins
    registry = Registry.from_entry_points()
    assert registry.find("s3://bucket/model").name == "s3"
    assert registry.find("hf://owner/model").name == "hf"
    assert registry.find("https://host/model.onnx").name == "http"  # the fallback loses to nobody here
    loaded = sorted(name for name, entry in registry.entries.items() if entry.cls is not None)
    assert loaded == ["hf", "http", "s3"]

    # While nothing was installed since, the index alone names the providers: no metadata scan.
    import importlib.metadata

    def no_scan(**_kw: object) -> object:
        raise AssertionError("the index should have spared the scan")

    with monkeypatch.context() as patch:
        patch.setattr(importlib.metadata, "entry_points", no_scan)
        registry = Registry.from_entry_points()
        assert registry.find("s3://bucket/model").name == "s3"
        assert registry.entries["s3"].distribution.startswith("storage-initializer-s3 ")

    # An index of other entry points (a plugin installed since: a directory on sys.path changed) is ignored.
    data = json.loads(index.read_text())
    data["key"] = data["key"][1:]
    data["paths"][-1][1] += 1
    index.write_text(json.dumps(data))
    registry = Registry.from_entry_points()
    assert registry.find("s3://bucket/model").name == "s3"
    assert all(entry.cls is not None for entry in registry.entries.values() if entry.error is None)

    # A stale index (the winner's class now declares other formats) is dropped, and the choice redone.
    registry_module.write_index(str(index))
    data = json.loads(index.read_text())
    data["providers"]["gs"] = {"formats": [{"prefix": "s3://"}, {"prefix": "s3://bucket/"}], "fallback": False}
    index.write_text(json.dumps(data))
    registry = Registry.from_entry_points()
    assert registry.find("s3://bucket/model").name == "s3"


def test_a_resolver_is_loaded_from_an_entry_point_and_needs_no_list_or_open_range() -> None:
    alias = ProviderEntry("alias", EntryPoint("alias", f"{__name__}:Alias", GROUP))
    registry = Registry([alias, ProviderEntry("short", None, cls=ShortPrefix)])
    assert registry.find("alias://iris").cls is Alias
    provider, uri, _chain = resolve_chain(registry, "alias://iris", lambda e, o: e.cls(ProviderContext(env=dict(o))))  # type: ignore[misc]
    assert isinstance(provider, ShortPrefix) and uri == "s3://bucket/iris"


class Nothing(Resolver):
    uri_formats = (UriFormat(prefix="nothing://"),)

    def resolve(self, uri: str) -> str:
        return None  # type: ignore[return-value]  # a broken plugin


def test_a_resolver_that_answers_nothing_is_an_error() -> None:
    with pytest.raises(ProviderError, match="neither downloads nor resolves"):
        resolve_chain(_registry(nothing=Nothing), "nothing://x", lambda e, o: e.cls(ProviderContext()))  # type: ignore[misc]
