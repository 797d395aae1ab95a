"""Digest and manifest pins: the operator's own sha256 of the model.

A store's checksum proves that the bytes arrived as stored; a pin proves the
stored model is the one the operator meant. The engine computes the sha256
of every file a pin covers while the bytes arrive (``PairTransfer(sha256_for=...)``):
a sha256 the store announces (HF LFS, OCI blobs, S3 ``ChecksumSHA256``) is
verified and serves the pin; otherwise the sha256 is computed in the same
pass as the store's own checksum, from the buffers of a one-stream read or,
for a file read as parallel parts, in file order as the parts land
(:mod:`storage_initializer.engine.inorder`). A resumed file's prefix is read
back from disk once. Only what the engine did not download this run (files
an earlier run completed, files extracted from an archive) is hashed here,
after the download, with one sequential read.

Measured (1 GiB file, nginx on 127.0.0.1, default settings: 4 parallel
ranged parts; the http provider; wall time, median of 5 interleaved runs on
a 2-core machine shared with other work, load ~2; "after" is the previous
engine, which read the file again once it was complete):

===========================  ======  =================  ====================
server                       no pin  pin, hashed after  pin, while streaming
===========================  ======  =================  ====================
limit_rate 32m (128 MiB/s)   8.26 s  9.19 s             8.56 s
limit_rate 64m (256 MiB/s)   4.50 s  5.22 s             4.71 s
loopback, no limit           0.98 s  2.07 s             1.91 s
===========================  ======  =================  ====================

The sha256 of 1 GiB costs ~0.6 s of CPU either way (SHA-NI). Hashed after
the download it is a tail; hashed while streaming it hides behind the
transfer when the network is the limit (within 0.2-0.3 s of no pin). On
loopback the CPU is the limit and both cost about the same. (Letting only
the workers hash, never the event loop, measured the same.)
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping

from storage_initializer.errors import ConfigError, IntegrityError, UsageError

_BUFFER = 1024 * 1024


def sha256_of(path: str) -> str:
    """The sha256 of the file at ``path``, read once."""
    digest = hashlib.sha256()
    buf = bytearray(_BUFFER)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as handle:
        while n := handle.readinto(view):
            digest.update(view[:n])
    return digest.hexdigest()


def parse_manifest(path: str) -> dict[str, str]:
    """Read a ``sha256sum`` file: ``HEX  PATH`` (or ``HEX *PATH``) per line -> {relative path: hex}."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        raise ConfigError(f"--expect-manifest {path}: {exc.strerror or exc}", hint="check the path") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--expect-manifest {path} is not UTF-8 text", hint="use the output of sha256sum") from None
    entries: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        digest, sep, name = line.partition(" ")
        if sep and name[:1] in (" ", "*"):
            name = name[1:]
        name = name.removeprefix("./")
        if len(digest) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digest) or not name:
            raise ConfigError(
                f"--expect-manifest {path} line {number} is not 'SHA256  PATH'",
                hint="use the output of sha256sum run in the model's directory",
            )
        parts = name.split("/")
        if name.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in name:
            raise ConfigError(f"--expect-manifest {path} line {number}: {name!r} is not a relative path in the model")
        if name in entries and entries[name] != digest.lower():
            raise ConfigError(f"--expect-manifest {path} lists {name} twice with different digests")
        entries[name] = digest.lower()
    if not entries:
        raise ConfigError(f"--expect-manifest {path} lists no file", hint="use the output of sha256sum")
    return entries


def check_digest(shown_uri: str, files: Mapping[str, str], expected: str, known: Mapping[str, str]) -> str:
    """Check the single downloaded file against ``expected``; return its sha256.

    ``files`` maps the pair's relative paths to their absolute paths; ``known``
    gives the sha256 the engine already verified, per relative path.
    """
    if len(files) != 1:
        raise UsageError(
            f"--expect-digest needs a URI naming one file or one archive; {shown_uri} names {len(files)} files",
            hint="use --expect-manifest for a directory",
        )
    ((relpath, path),) = files.items()
    actual = known.get(relpath) or sha256_of(path)
    if actual != expected:
        raise IntegrityError(f"{relpath}: sha256 is {actual}, --expect-digest pins {expected}")
    return actual


def check_manifest(
    manifest_path: str,
    files: Mapping[str, str],
    known: Mapping[str, str],
    strict: bool,
) -> dict[str, str]:
    """Check every file the manifest lists (and, if ``strict``, that no other exists).

    Returns {relative path: sha256} of the files checked.
    """
    expected = parse_manifest(manifest_path)
    missing = sorted(set(expected) - set(files))
    if missing:
        raise IntegrityError(
            f"{_first(missing)}: listed in --expect-manifest {manifest_path} but not in the model"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    if strict:
        extra = sorted(set(files) - set(expected))
        if extra:
            raise IntegrityError(
                f"{_first(extra)}: in the model but not in --expect-manifest {manifest_path} (--strict-manifest)"
                + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
            )
    checked: dict[str, str] = {}
    for relpath in sorted(expected):
        actual = known.get(relpath) or sha256_of(files[relpath])
        if actual != expected[relpath]:
            raise IntegrityError(f"{relpath}: sha256 is {actual}, --expect-manifest pins {expected[relpath]}")
        checked[relpath] = actual
    return checked


def _first(names: Iterable[str]) -> str:
    return next(iter(names))


def tree_files(root: str, skip_top: Iterable[str]) -> dict[str, str]:
    """{relative path: absolute path} of the files under ``root``; a symlink (an archive may hold
    links inside it) counts as a file, never followed.

    Top-level names in ``skip_top`` (the engine's state directory) are left out.
    """
    skip = set(skip_top)
    found: dict[str, str] = {}
    for directory, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(directory, root)
        if rel == ".":
            dirnames[:] = [d for d in dirnames if d not in skip]
        links = [d for d in dirnames if os.path.islink(os.path.join(directory, d))]
        dirnames[:] = [d for d in dirnames if d not in links]
        for name in [*filenames, *links]:
            if rel == "." and name in skip:
                continue
            relpath = name if rel == "." else f"{rel.replace(os.sep, '/')}/{name}"
            found[relpath] = os.path.join(directory, name)
    return found
