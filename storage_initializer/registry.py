"""Find the provider for a URI among the installed entry points.

Built-in providers and third-party ones are found the same way: the
``storage_initializer.providers`` entry-point group. Each entry point is
loaded only when needed (listing providers loads every class but never its
SDK, since providers import SDKs lazily), and a provider that fails to load
is reported with the error and what to install, without affecting others.

Precedence, so the result never depends on installation order:

1. non-fallback providers beat fallback ones (generic ``https://``);
2. a prefix match beats a regex match;
3. a longer prefix beats a shorter one;
4. anything still tied is an error naming the candidates and the variable
   that picks one (``STORAGE_INITIALIZER_PROVIDER``).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from storage_initializer.errors import ProviderError, ProviderUnavailableError
from storage_initializer.provider import Plugin, Provider, Resolution, Resolver, UriFormat
from storage_initializer.redact import redact

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

log = logging.getLogger("storage_initializer")

GROUP = "storage_initializer.providers"
MAX_RESOLVE_DEPTH = 8
LIST_HINT = "storage-initializer --list-providers shows the URI formats"

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(/*)")


class _EntryPointLike(Protocol):
    value: str

    def load(self) -> Any: ...


@dataclass
class ProviderEntry:
    """One installed provider: its entry point and, once loaded, its class."""

    name: str
    entry_point: EntryPoint | _EntryPointLike | None
    cls: type[Plugin] | None = None
    error: str | None = None
    #: (formats, fallback) from the providers index, known without importing the class.
    indexed: tuple[tuple[UriFormat, ...], bool] | None = None

    def formats(self) -> tuple[tuple[UriFormat, ...], bool] | None:
        """The URI formats and fallback flag: from the index if there, else from the loaded class."""
        if self.cls is None and self.indexed is not None:
            return self.indexed
        cls = self.load()
        return None if cls is None else (tuple(cls.uri_formats), cls.fallback)

    @property
    def distribution(self) -> str:
        dist = getattr(self.entry_point, "dist", None)
        return f"{dist.name} {dist.version}" if dist is not None else "(built in)"

    @property
    def install_hint(self) -> str:
        dist = getattr(self.entry_point, "dist", None)
        name = dist.name if dist is not None else self.name
        return f"pip install --force-reinstall '{name}'"

    def load(self) -> type[Plugin] | None:
        if self.cls is None and self.error is None and self.entry_point is not None:
            try:
                loaded = self.entry_point.load()
            except Exception as exc:
                self.error = f"{type(exc).__name__}: {exc}"
                return None
            if not (isinstance(loaded, type) and issubclass(loaded, (Provider, Resolver))):
                self.error = f"{self.entry_point.value} is not a storage_initializer Provider or Resolver subclass"
                return None
            self.cls = loaded
        return self.cls

    def missing_requirements(self) -> list[str]:
        cls = self.load()
        if cls is None:
            return []
        missing = []
        for module in cls.requires:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                missing.append(module)
        return missing


@dataclass(frozen=True)
class Match:
    entry: ProviderEntry
    fmt: UriFormat

    def rank(self) -> tuple[int, int, int]:
        known = self.entry.formats()
        assert known is not None
        is_prefix = self.fmt.prefix is not None
        return (0 if known[1] else 1, 1 if is_prefix else 0, len(self.fmt.prefix or ""))


class Registry:
    """The installed providers, by name."""

    def __init__(self, entries: Iterable[ProviderEntry]) -> None:
        self.entries: dict[str, ProviderEntry] = {}
        for entry in entries:
            if entry.name in self.entries:
                # Two distributions claim one name: keep the first, say so.
                log.warning(
                    "provider name %r is registered twice (%s and %s); using the first",
                    entry.name,
                    self.entries[entry.name].distribution,
                    entry.distribution,
                )
                continue
            self.entries[entry.name] = entry

    @classmethod
    def from_entry_points(cls) -> Registry:
        """The installed providers; their URI formats from the index where it still describes them.

        Finding the provider of a URI otherwise imports every provider's module (their SDKs
        stay unimported, but the modules alone cost tens of milliseconds of a pod's start).
        The image writes the index once, after installing (:func:`write_index`).
        """
        index = _read_index()
        registry = None
        if index is not None and index.get("paths") == _import_paths():
            # Nothing installed or removed since: the index names the entry points too.
            try:
                registry = cls(
                    ProviderEntry(name, _IndexedEntryPoint(value, dist_name, dist_version))
                    for name, value, dist_name, dist_version in index["key"]
                )
            except (ValueError, TypeError):
                registry = None
        if registry is None:
            registry = cls._scan()
            if index is None or index.get("key") != _index_key(registry.entries.values()):
                return registry
        if index is not None:
            registry._apply_index(index)
        return registry

    @classmethod
    def _scan(cls) -> Registry:
        from importlib.metadata import entry_points  # reads every installed distribution: ~10 ms

        eps = sorted(entry_points(group=GROUP), key=lambda ep: ep.name)
        return cls(ProviderEntry(ep.name, ep) for ep in eps)

    def _apply_index(self, index: dict[str, Any]) -> None:
        """Take the providers' URI formats from ``index`` (a malformed one is ignored)."""
        try:
            for name, known in index["providers"].items():
                formats = tuple(UriFormat(**fmt) for fmt in known["formats"])
                if name in self.entries:
                    self.entries[name].indexed = (formats, bool(known["fallback"]))
        except (KeyError, ValueError, TypeError, AttributeError):
            for entry in self.entries.values():
                entry.indexed = None

    @classmethod
    def from_classes(cls, providers: Mapping[str, type[Plugin]]) -> Registry:
        """A registry of given classes (for tests and embedding)."""
        return cls(ProviderEntry(name, None, cls=provider) for name, provider in providers.items())

    def loaded(self) -> Iterator[ProviderEntry]:
        for entry in self.entries.values():
            if entry.load() is not None:
                yield entry

    def broken(self) -> list[ProviderEntry]:
        return [e for e in self.entries.values() if e.load() is None]

    def formats_text(self) -> str:
        lines = []
        for entry in self.loaded():
            assert entry.cls is not None
            formats = ", ".join(str(f) for f in entry.cls.uri_formats)
            lines.append(f"{entry.name} ({formats})")
        return "; ".join(lines) or "none"

    def find(self, uri: str, forced: str | None = None) -> ProviderEntry:
        """The provider that serves ``uri`` (``forced``: by name)."""
        if forced:
            entry = self.entries.get(forced)
            if entry is None:
                raise ProviderError(
                    f"STORAGE_INITIALIZER_PROVIDER={forced!r} names no installed provider",
                    hint=f"installed: {', '.join(sorted(self.entries)) or 'none'}",
                )
            self._require_loaded(entry)
            return entry
        matches = [
            Match(entry, fmt)
            for entry in self.entries.values()
            for fmt in (entry.formats() or ((), False))[0]
            if fmt.matches(uri)
        ]
        if not matches and "://" not in uri and "local" in self.entries and os.path.exists(uri):
            # KServe: any path that exists is local, relative ones too (`models /mnt/models`).
            entry = self.entries["local"]
            self._require_loaded(entry)
            return entry
        if not matches:
            raise self._no_provider_error(uri)
        # Keep each provider's best format only, then compare providers.
        best: dict[str, Match] = {}
        for match in matches:
            current = best.get(match.entry.name)
            if current is None or match.rank() > current.rank():
                best[match.entry.name] = match
        ranked = sorted(best.values(), key=Match.rank, reverse=True)
        if len(ranked) > 1 and ranked[0].rank() == ranked[1].rank():
            tied = [m for m in ranked if m.rank() == ranked[0].rank()]
            names = ", ".join(f"{m.entry.name} ({m.fmt})" for m in tied)
            raise ProviderError(
                f"several providers serve {redact(uri)} equally well: {names}",
                hint=f"choose one with STORAGE_INITIALIZER_PROVIDER={tied[0].entry.name}",
            )
        entry = ranked[0].entry
        self._require_loaded(entry)
        if entry.indexed is not None and entry.formats() != entry.indexed:
            # The index is stale (the class now says otherwise): decide again from the classes.
            for each in self.entries.values():
                each.indexed = None
            return self.find(uri, forced)
        return entry

    def schemes(self) -> list[str]:
        """The URI schemes the installed providers' prefix formats name (``s3``, ``hf``, ...)."""
        found = set()
        for entry in self.loaded():
            assert entry.cls is not None
            for fmt in entry.cls.uri_formats:
                match = _SCHEME_RE.match(fmt.prefix or "")
                if match and match.group(2) == "//":
                    found.add(match.group(1).lower())
        return sorted(found)

    def _no_provider_error(self, uri: str) -> ProviderError:
        """One short line: the scheme not recognised and the closest known one, or the missing path."""
        shown = redact(uri)
        broken = self.broken()
        extra = ""
        if broken:
            extra = "; failed to load: " + ", ".join(f"{e.name} ({e.install_hint})" for e in broken)
        match = _SCHEME_RE.match(uri)
        if match is None or (len(match.group(1)) == 1 and match.group(2) != "//"):  # a path (or a drive letter)
            return ProviderError(
                f"{shown}: no such file or directory in {os.getcwd()}",
                hint=f"a path without a scheme is local; {LIST_HINT}{extra}",
            )
        scheme, slashes = match.group(1), match.group(2)
        known = self.schemes()
        rest = uri[match.end() :]
        if scheme.lower() in known:  # a known scheme, mistyped separator: s3:/bad
            suggestion = f"{scheme.lower()}://{rest}"
            return ProviderError(
                f"{shown} is not a valid URI (did you mean {redact(suggestion)}?)", hint=f"{LIST_HINT}{extra}"
            )
        import difflib

        close = difflib.get_close_matches(scheme.lower(), known, n=1, cutoff=0.5)
        guess = f"did you mean {close[0]}://? " if close else ""
        shown_scheme = f"{scheme}:{slashes}"
        return ProviderError(f"unknown URI scheme {shown_scheme!r} in {shown}", hint=f"{guess}{LIST_HINT}{extra}")

    @staticmethod
    def _require_loaded(entry: ProviderEntry) -> None:
        if entry.load() is None:
            raise ProviderUnavailableError(
                f"provider {entry.name} cannot load: {entry.error}", hint=f"try {entry.install_hint}"
            )
        missing = entry.missing_requirements()
        if missing:
            raise ProviderUnavailableError(
                f"provider {entry.name} needs {', '.join(missing)}, which is not installed",
                hint=f"pip install {' '.join(missing)} (or {entry.install_hint})",
            )


def resolve_chain(
    registry: Registry,
    uri: str,
    make: Callable[[ProviderEntry, Mapping[str, str]], Plugin],
    forced: str | None = None,
) -> tuple[Provider, str, list[str]]:
    """Follow resolvers from ``uri`` to the provider that downloads.

    Returns that provider (created by ``make`` with the environment overlays
    collected on the way), the final URI and the chain of URIs seen. A
    :class:`Resolver` always resolves; a :class:`Provider` resolves when its
    :meth:`~Provider.resolve` answers. A loop, or a chain longer than
    :data:`MAX_RESOLVE_DEPTH`, is an error.
    """
    seen = [uri]
    overlay: dict[str, str] = {}
    current = uri
    for depth in range(MAX_RESOLVE_DEPTH + 1):
        entry = registry.find(current, forced if depth == 0 else None)
        plugin = make(entry, overlay)
        try:
            plugin.validate(current)
            resolved = plugin.resolve(current) if isinstance(plugin, (Provider, Resolver)) else None
        except BaseException:
            plugin.close()
            raise
        if resolved is None:
            if isinstance(plugin, Provider):
                return plugin, current, seen
            plugin.close()
            raise ProviderError(f"{entry.name} neither downloads nor resolves {redact(current)}")
        plugin.close()
        if isinstance(resolved, Resolution):
            overlay.update(resolved.env)
            target = resolved.uri
        else:
            target = resolved
        log.info("resolved %s -> %s", redact(current), redact(target))
        if target in seen:
            raise ProviderError(f"resolving {redact(uri)} loops: " + " -> ".join(redact(u) for u in [*seen, target]))
        seen.append(target)
        current = target
    raise ProviderError(f"resolving {redact(uri)} took more than {MAX_RESOLVE_DEPTH} steps")


#: Where the image keeps the providers index (beside the package, written at build time).
INDEX_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "providers-index.json")


def _index_key(entries: Iterable[ProviderEntry]) -> list[list[str]]:
    """What the index must match: each entry point and the version of its distribution."""
    key = []
    for entry in entries:
        ep = entry.entry_point
        dist = getattr(ep, "dist", None)
        key.append([entry.name, ep.value if ep else "", dist.name if dist else "", dist.version if dist else ""])
    return sorted(key)


def _import_paths() -> list[list[Any]]:
    """Each directory on ``sys.path`` with its modification time.

    Installing, upgrading or removing a distribution creates or deletes its
    ``*.dist-info`` directory, which changes the mtime of the directory that
    holds it: an index recorded with the same list still describes the
    installed entry points, without scanning every distribution's metadata.
    """
    found = []
    # sys.path[0] is the script's directory or the working directory: it differs between
    # `python -m ... --write-index` and the console script, and holds no distribution.
    for entry in sys.path if getattr(sys.flags, "safe_path", False) else sys.path[1:]:
        try:
            found.append([entry, os.stat(entry or ".").st_mtime_ns])
        except OSError:
            continue
    return found


class _IndexedEntryPoint:
    """An entry point as the index recorded it (``module:attribute`` and its distribution)."""

    def __init__(self, value: str, dist_name: str, dist_version: str) -> None:
        self.value = value
        self.dist = _IndexedDist(dist_name, dist_version) if dist_name else None

    def load(self) -> Any:
        import importlib

        module, _, attr = self.value.partition(":")
        loaded: Any = importlib.import_module(module.strip())
        for part in attr.strip().split(".") if attr.strip() else ():
            loaded = getattr(loaded, part)
        return loaded


@dataclass(frozen=True)
class _IndexedDist:
    name: str
    version: str


def _read_index() -> dict[str, Any] | None:
    """The providers index the image wrote, or None (none, unreadable or not an index)."""
    try:
        with open(INDEX_PATH, encoding="utf-8") as handle:
            index = json.load(handle)
    except (OSError, ValueError):
        return None
    return index if isinstance(index, dict) and isinstance(index.get("key"), list) else None


def write_index(path: str = INDEX_PATH) -> int:
    """Write the providers index (every installed provider's URI formats); return the count.

    Written after the last install (the image does it at build time); a later
    install or removal makes it fall back to scanning the entry points.
    """
    registry = Registry._scan()
    providers = {}
    for entry in registry.entries.values():
        cls = entry.load()
        if cls is not None:
            providers[entry.name] = {"formats": [f.as_crd() for f in cls.uri_formats], "fallback": cls.fallback}
    data = {"key": _index_key(registry.entries.values()), "providers": providers, "paths": _import_paths()}
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1)
    return len(providers)


if __name__ == "__main__":  # python -m storage_initializer.registry --write-index
    if sys.argv[1:] != ["--write-index"]:
        sys.exit("usage: python -m storage_initializer.registry --write-index")
    print(f"wrote {INDEX_PATH}: {write_index()} providers")
