"""Safe extraction of a downloaded archive (the KServe rule).

When a URI yields exactly one ``.zip``/``.tar``/``.tar.gz``/``.tgz``/
``.tar.bz2``/``.tar.xz`` file, it is extracted into DEST and removed.
Extraction goes to a staging directory inside DEST's state directory and the
results are renamed into place only when the whole archive was read, so a
hostile or broken archive leaves nothing behind. Refused, with a clear error:
members that escape (``..``, absolute paths, links pointing outside), device
files and FIFOs, zip symlinks, and archives that expand beyond
``max_ratio`` times their size (bombs). Hard links and symlinks that stay
inside the archive are kept.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING

from storage_initializer.engine.dest import DestDir, describe_os_error
from storage_initializer.engine.paths import STATE_DIR_NAME, is_own_artifact, safe_relpath
from storage_initializer.errors import ArchiveError, NotFoundError, UnsafePathError

if TYPE_CHECKING:
    import tarfile

#: Which member paths to keep (the allow/ignore patterns), for a tree the engine assembled.
Keep = Callable[[str], bool]

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".zip")
MAX_MEMBERS = 1_000_000
_CHUNK = 1024 * 1024


def is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def _member_path(name: str) -> str | None:
    """Normalise an archive member name; None for the archive root and for members to skip."""
    while name.startswith("./"):
        name = name[2:]
    name = name.rstrip("/")
    if name in ("", "."):
        return None
    if is_own_artifact(name):
        return None  # a tarball of an earlier DEST: its resume state is not model content
    try:
        return safe_relpath(name)
    except UnsafePathError as exc:
        raise ArchiveError(f"archive member refused: {exc.message}") from None


class _Budget:
    """Counts extracted bytes against the bomb cap."""

    def __init__(self, archive_size: int, max_ratio: float) -> None:
        self.limit = int(max(archive_size, 1) * max_ratio) + _CHUNK
        self.used = 0
        self.max_ratio = max_ratio

    def spend(self, n: int) -> None:
        self.used += n
        if self.used > self.limit:
            raise ArchiveError(
                f"archive expands beyond {self.max_ratio:g}x its size ({self.limit} bytes); refusing a possible bomb",
                hint="raise STORAGE_INITIALIZER_MAX_EXTRACT_RATIO if this archive is legitimate",
            )


def _copy(source: IO[bytes], target: str, budget: _Budget, mode: int) -> None:
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except FileExistsError:
        raise ArchiveError(f"archive holds {os.path.basename(target)!r} twice") from None
    with os.fdopen(fd, "wb") as out:
        while chunk := source.read(_CHUNK):
            budget.spend(len(chunk))
            try:
                out.write(chunk)
            except OSError as exc:
                raise describe_os_error(exc, target) from None


class _Skipped:
    """Counts members left out by the patterns."""

    def __init__(self, keep: Keep | None) -> None:
        self.keep = keep
        self.count = 0

    def skip(self, relpath: str, is_dir: bool) -> bool:
        """Leave out a member the patterns do not match (directories then come only with their files)."""
        if self.keep is None:
            return False
        if is_dir or not self.keep(relpath):
            self.count += 0 if is_dir else 1
            return True
        return False


def _extract_tar(path: str, staging: DestDir, budget: _Budget, skipped: _Skipped) -> None:
    import tarfile  # here, not at start-up: the archive modules cost ~5 ms

    try:
        archive = tarfile.open(path, "r:*")  # noqa: SIM115 - closed by the with below
    except (tarfile.TarError, OSError) as exc:
        raise ArchiveError(f"cannot open {os.path.basename(path)} as a tar archive: {exc}") from None
    _extract_members(archive, os.path.basename(path), staging, budget, skipped)


def _extract_members(archive: tarfile.TarFile, name: str, staging: DestDir, budget: _Budget, skipped: _Skipped) -> None:
    """Extract every member of an open tar (a file, or a stream read once in order)."""
    import tarfile  # here, not at start-up: the archive modules cost ~5 ms

    with archive:
        count = 0
        try:
            for member in archive:
                count += 1
                if count > MAX_MEMBERS:
                    raise ArchiveError(f"archive has more than {MAX_MEMBERS} members")
                relpath = _member_path(member.name)
                if relpath is None or skipped.skip(relpath, member.isdir()):
                    continue
                try:
                    checked = tarfile.data_filter(member, staging.root)
                except tarfile.FilterError as exc:
                    raise ArchiveError(f"archive member {member.name!r} refused: {exc}") from None
                if member.isdir():
                    staging.ensure_dir(relpath)
                elif member.isreg():
                    target = staging.ensure_parent(relpath)
                    source = archive.extractfile(member)
                    assert source is not None
                    _copy(source, target, budget, 0o755 if member.mode & 0o111 else 0o644)
                elif member.issym() or member.islnk():
                    staging.ensure_parent(relpath)
                    archive.extract(checked.replace(name=relpath), staging.root, filter="fully_trusted")
                else:
                    raise ArchiveError(f"archive member {member.name!r} is a device or FIFO; refused")
        except (tarfile.TarError, EOFError, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno is not None:
                raise describe_os_error(exc, staging.root) from None
            raise ArchiveError(f"archive {name} is corrupt: {exc}") from None


def _extract_zip(path: str, staging: DestDir, budget: _Budget, skipped: _Skipped) -> None:
    import zipfile

    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchiveError(f"cannot open {os.path.basename(path)} as a zip archive: {exc}") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_MEMBERS:
            raise ArchiveError(f"archive has more than {MAX_MEMBERS} members")
        for info in infos:
            relpath = _member_path(info.filename)
            if relpath is None or skipped.skip(relpath, info.is_dir()):
                continue
            unix_mode = info.external_attr >> 16
            if stat.S_ISLNK(unix_mode):
                raise ArchiveError(f"archive member {info.filename!r} is a symlink; refused in zip archives")
            if info.is_dir():
                staging.ensure_dir(relpath)
                continue
            target = staging.ensure_parent(relpath)
            try:
                with archive.open(info) as source:
                    _copy(source, target, budget, 0o755 if unix_mode & 0o111 else 0o644)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
                raise ArchiveError(f"archive {os.path.basename(path)} is corrupt: {exc}") from None
            except RuntimeError as exc:  # encrypted members
                raise ArchiveError(f"cannot extract {info.filename!r}: {exc}") from None


def _walk(root: str) -> Iterator[tuple[str, bool]]:
    """Yield (relative path, is_dir) of everything under ``root``, parents first."""
    for directory, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(directory, root)
        for name in sorted(dirnames):
            yield (name if rel == "." else f"{rel}/{name}"), True
        for name in sorted(filenames):
            yield (name if rel == "." else f"{rel}/{name}"), False


def extract(path: str, dest: DestDir, max_ratio: float) -> int:
    """Extract the archive at ``path`` into ``dest``; return the number of files.

    The archive file itself is removed on success and kept when the archive
    cannot be extracted (hostile, broken, a bomb).
    """
    budget = _Budget(os.path.getsize(path), max_ratio)
    skipped = _Skipped(None)

    def fill(staging: DestDir) -> None:
        if path.lower().endswith(".zip"):
            _extract_zip(path, staging, budget, skipped)
        else:
            _extract_tar(path, staging, budget, skipped)

    # Removed before the members move in: one of them may have the archive's own name.
    return _extract_into(dest, os.path.basename(path), fill, skipped, lambda: os.unlink(path))


def extract_stream(
    stream: IO[bytes],
    dest: DestDir,
    input_size: int,
    max_ratio: float,
    keep: Keep | None = None,
    before_publish: Callable[[], None] = lambda: None,
) -> int:
    """Extract an uncompressed tar read from ``stream`` (a pipe: read once, in order) into ``dest``.

    The same rules as :func:`extract`; the bomb cap is ``max_ratio`` times
    ``input_size``, the bytes the stream was made from.
    ``keep`` (the allow/ignore patterns) leaves out the members whose path it
    refuses; directories then come only with the files kept. ``before_publish``
    runs once the stream is read, before anything moves into ``dest``: it may
    raise to publish nothing (the writer of the stream failed). Returns the
    number of files.
    """
    budget = _Budget(input_size, max_ratio)
    skipped = _Skipped(keep)

    def fill(staging: DestDir) -> None:
        import tarfile

        try:
            archive = tarfile.open(fileobj=stream, mode="r|")  # noqa: SIM115 - closed by _extract_members
        except (tarfile.TarError, OSError) as exc:
            raise ArchiveError(f"the assembled tree is not a tar stream: {exc}") from None
        _extract_members(archive, "of the assembled tree", staging, budget, skipped)
        before_publish()

    return _extract_into(dest, "of the assembled tree", fill, skipped, lambda: None)


def _extract_into(
    dest: DestDir, name: str, fill: Callable[[DestDir], None], skipped: _Skipped, before_moving: Callable[[], None]
) -> int:
    """Extract with ``fill`` into a staging directory in DEST's state directory, then move it all into ``dest``."""
    import shutil
    import tempfile

    state_dir = os.path.join(dest.root, STATE_DIR_NAME)
    os.makedirs(state_dir, exist_ok=True)
    staging_root = tempfile.mkdtemp(prefix="extract-", dir=state_dir)
    staging = DestDir(staging_root)
    try:
        fill(staging)
        members = list(_walk(staging_root))
        if not any(not is_dir or os.path.islink(staging.path_of(relpath)) for relpath, is_dir in members):
            if skipped.count:
                raise NotFoundError(
                    f"no file matches the allow/ignore patterns ({skipped.count} file(s) filtered out)",
                    hint="check STORAGE_ALLOW_PATTERNS / STORAGE_IGNORE_PATTERNS",
                )
            raise ArchiveError(f"archive {name} holds no files")
        before_moving()
        files = 0
        for relpath, is_dir in members:
            if is_dir and not os.path.islink(staging.path_of(relpath)):
                dest.ensure_dir(relpath)
                continue
            final = dest.ensure_parent(relpath)
            dest.check_target(final)
            os.replace(staging.path_of(relpath), final)
            files += 1
        return files
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging_root)
