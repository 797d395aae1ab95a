"""Stage a pair inside DEST, then publish it, or discard it.

The staging directory is ``DEST/.si-staging/<id>/``: inside DEST because
DEST's parent may be read-only (the container's root filesystem), and on
DEST's filesystem so that publishing is a rename per file. ``<id>`` derives
from the source (without query, fragment and credentials), so a rerun finds
the files and the engine's resume state of an interrupted run there. It is
removed after the model is published (DEST then holds exactly the model),
kept after a transient failure (the rerun resumes), and removed with the
staged files after a failed verification.
"""

from __future__ import annotations

import contextlib
import hashlib
import os

from storage_initializer.engine.dest import DestDir
from storage_initializer.engine.paths import STATE_DIR_NAME
from storage_initializer.errors import UnsafePathError
from storage_initializer.integrity.pins import tree_files

STAGING_DIR_NAME = ".si-staging"


def source_id(uri: str) -> str:
    """A stable id of the source: the URI without query, fragment and userinfo, hashed."""
    base = uri.split("#", 1)[0].split("?", 1)[0]
    scheme, sep, rest = base.partition("://")
    if sep:
        authority, slash, path = rest.partition("/")
        base = f"{scheme.lower()}://{authority.rpartition('@')[2]}{slash}{path}"
    return hashlib.sha256(base.rstrip("/").encode("utf-8", "surrogateescape")).hexdigest()[:20]


class Stage:
    """The staging area of one pair in one DEST."""

    def __init__(self, dest_root: str, uri: str) -> None:
        self.dest_root = dest_root
        self.parent = os.path.join(dest_root, STAGING_DIR_NAME)
        ident = source_id(uri)
        #: Where the engine downloads the model.
        self.root = os.path.join(self.parent, ident)
        #: Beside the model (never part of it): a signature fetched from elsewhere, a trust config.
        self.side = os.path.join(self.parent, ident + ".aux")

    def prepare(self) -> None:
        """Create the stage, never through a symlink planted in DEST."""
        dest = DestDir(self.dest_root)
        for path in (self.root, self.side):
            dest.ensure_dir(os.path.relpath(path, self.dest_root).replace(os.sep, "/"))

    def files(self) -> dict[str, str]:
        """{relative path: staged path} of the model's files (the engine's state left out)."""
        return tree_files(self.root, (STATE_DIR_NAME,))

    def publish(self) -> int:
        """Move every staged file to its place in DEST; return how many; remove the stage."""
        dest = DestDir(self.dest_root)
        files = self.files()
        for relpath in files:
            if relpath.split("/", 1)[0] in (STAGING_DIR_NAME, STATE_DIR_NAME):
                raise UnsafePathError(f"the model's {relpath} collides with this tool's {STAGING_DIR_NAME}/ directory")
        for relpath, staged in sorted(files.items()):
            final = dest.ensure_parent(relpath)
            dest.check_target(final)
            os.replace(staged, final)
        self._create_empty_dirs()
        self.discard()
        return len(files)

    def _create_empty_dirs(self) -> None:
        """Directories of the model that hold no file are created in DEST too (as a copy would)."""
        dest = DestDir(self.dest_root)
        for directory, dirnames, _ in os.walk(self.root):
            rel = os.path.relpath(directory, self.root)
            if rel == ".":
                dirnames[:] = [d for d in dirnames if d != STATE_DIR_NAME]
                continue
            dest.ensure_dir(rel.replace(os.sep, "/"))

    def discard(self) -> None:
        """Remove the staged files and this pair's side files; the staging parent if now empty."""
        for path in (self.root, self.side):
            import shutil  # lazily: shutil loads zlib, bz2 and lzma

            shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(self.parent)
