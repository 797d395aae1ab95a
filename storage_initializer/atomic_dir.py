"""Publish a whole DEST at once (``STORAGE_INITIALIZER_PUBLISH=atomic-dir``).

For the node download job of KServe's LocalModelCache: the node agent takes
"the job succeeded and the model's folder exists" as "the model is on this
node", so a folder must never exist half-filled. The model is downloaded
into a hidden staging folder and appears complete or not at all:

* DEST missing, or an empty directory that is not a mount point, with a
  writable parent: the stage is ``<parent>/.<name>.si-publish`` and it is
  renamed to DEST (one ``rename(2)``; a killed job leaves no DEST).
* DEST a mount point (KServe mounts the node volume's ``models/<name>``
  sub-path at ``/mnt/models``, so the folder exists before the job starts)
  or its parent read-only: the stage is ``DEST/.si-publish`` and its
  top-level entries are renamed into DEST at the end. A killed job leaves
  only the hidden stage, which no model server loads.
* DEST a directory that already holds files: an earlier run published it
  complete, so it is checked in place (files already complete are skipped).

A rerun resumes from the stage (the engine's resume state lives there).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil

from storage_initializer.errors import DestinationError

log = logging.getLogger("storage_initializer")

STAGE_SUFFIX = ".si-publish"
INSIDE_STAGE = ".si-publish"


class AtomicDir:
    """Where to download a DEST that must appear whole, and how to publish it."""

    def __init__(self, dest: str) -> None:
        self.dest = os.path.abspath(dest)
        parent, name = os.path.split(self.dest.rstrip(os.sep))
        self.mode = self._choose(parent)
        if self.mode == "beside":
            self.stage = os.path.join(parent, f".{name}{STAGE_SUFFIX}")
        elif self.mode == "inside":
            self.stage = os.path.join(self.dest, INSIDE_STAGE)
        else:
            self.stage = self.dest

    def _choose(self, parent: str) -> str:
        if os.path.isdir(self.dest):
            entries = [e for e in os.listdir(self.dest) if e != INSIDE_STAGE]
            if entries:
                return "in-place"
            if os.path.ismount(self.dest):
                return "inside"
        elif os.path.lexists(self.dest):
            raise DestinationError(f"DEST_PATH {self.dest} exists and is not a directory")
        else:
            # Not creatable: then not writable either, so staged inside (and DEST's creation reports it).
            with contextlib.suppress(OSError):
                os.makedirs(parent, exist_ok=True)
        return "beside" if os.access(parent or "/", os.W_OK | os.X_OK) else "inside"

    def describe(self) -> str:
        if self.mode == "in-place":
            return f"{self.dest} already holds a published model: checking it in place"
        return f"staging {self.dest} in {self.stage} until the whole model is downloaded"

    def publish(self) -> None:
        """Make the staged model DEST, all at once."""
        if self.mode == "in-place":
            return
        try:
            if self.mode == "beside":
                os.rename(self.stage, self.dest)  # replaces an empty directory, refuses a full one
            else:
                for name in sorted(os.listdir(self.stage)):
                    os.rename(os.path.join(self.stage, name), os.path.join(self.dest, name))
                shutil.rmtree(self.stage)
        except OSError as exc:
            raise DestinationError(
                f"cannot publish {self.dest}: {exc.strerror or exc}",
                hint="another job may have published this folder meanwhile; remove it to download again",
            ) from None
        log.info("published %s", self.dest)
