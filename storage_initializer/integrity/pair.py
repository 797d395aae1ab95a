"""The integrity steps of one run, called by the runner around each pair's download.

For a pair with a pin or a signature check: download into the stage
(:meth:`PairIntegrity.target`), check the digest pin on the file as
downloaded (:meth:`~PairIntegrity.downloaded`, before an archive is
extracted), then the manifest pin and the signature over the model
(:meth:`~PairIntegrity.verify`), then publish or discard
(:meth:`~PairIntegrity.finish`). Every pair also gets a :class:`PairRecord`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from storage_initializer import __version__
from storage_initializer.engine.hashing import FileHashes
from storage_initializer.errors import IntegrityError, StorageInitializerError, UsageError, classify
from storage_initializer.integrity import pins
from storage_initializer.integrity.options import IntegrityOptions, PairChecks
from storage_initializer.integrity.record import (
    FileEntry,
    Listing,
    PairRecord,
    build_record,
    record_digest,
    summary_line,
)
from storage_initializer.integrity.staging import Stage
from storage_initializer.provider import RemoteObject
from storage_initializer.redact import redact
from storage_initializer.settings import Settings

log = logging.getLogger("storage_initializer")

#: Fetches a small file (a signature given as a URI or a path) to a local path.
Fetcher = Callable[[str, str], None]


class IntegrityRun:
    """The integrity options of one run and the records of its pairs."""

    def __init__(self, options: IntegrityOptions, settings: Settings, pairs: Sequence[tuple[str, str]]) -> None:
        self.options = options
        self.settings = settings
        uris = [uri for uri, _ in pairs]
        # Every pair's checks are worked out first: a bad pin fails before any download.
        self._checks = {(uri, dest): options.for_pair(uri, uris) for uri, dest in pairs}
        if options.signature is not None:
            from storage_initializer.integrity import signing  # only a signed model needs it (and pathlib)

            signing.preflight(options.signature)
        self._records = {(uri, dest): PairRecord(uri=redact(uri), dest=dest) for uri, dest in pairs}
        self._order = list(pairs)
        self.record_bytes: bytes | None = None

    def pair(self, uri: str, dest: str, fetch: Fetcher) -> PairIntegrity:
        return PairIntegrity(self, uri, self._checks[(uri, dest)], self._records[(uri, dest)], fetch)

    @property
    def records(self) -> list[PairRecord]:
        return [self._records[pair] for pair in self._order]

    def write_record(self) -> str | None:
        """Write the record if ``--record`` was given; return its digest (``sha256:HEX``)."""
        data = build_record(self.records, __version__)
        self.record_bytes = data
        if not self.options.record:
            return None
        path = self.options.record
        temp = f"{path}.tmp{os.getpid()}"
        try:
            with open(temp, "wb") as handle:
                handle.write(data)
            os.replace(temp, path)
        except OSError as exc:
            raise StorageInitializerError(
                f"cannot write the record {path}: {exc.strerror or exc}", hint="check --record and the volume mount"
            ) from None
        log.info("record written to %s (%s)", path, record_digest(data))
        return record_digest(data)

    def summary(self, digest: str | None) -> str:
        return summary_line(self.records, digest)


class PairIntegrity:
    """The integrity steps of one pair."""

    def __init__(self, run: IntegrityRun, uri: str, checks: PairChecks, record: PairRecord, fetch: Fetcher) -> None:
        self.run = run
        self.uri = uri
        self.shown = redact(uri)
        self.checks = checks
        self.record = record
        self.fetch = fetch
        self.stage: Stage | None = None
        settings = run.settings
        self.listing = Listing(settings.allow_patterns, settings.ignore_patterns, keep=run.options.active)
        self._entries: list[FileEntry] = []
        self._verification_failed = False
        self._manifest: dict[str, str] = {}

    def wants_sha256(self, relpath: str) -> bool:
        """Whether the engine should hash this file with sha256 as it downloads it (a pin checks it)."""
        return self.checks.digest is not None or relpath in self._manifest

    # -- before the download -------------------------------------------------
    def target(self, dest_root: str) -> str:
        """Where the engine should download: the stage when a check applies, else DEST."""
        if not self.checks.staged:
            return dest_root
        if self.checks.manifest:  # read now: a bad manifest fails before the download
            self._manifest = pins.parse_manifest(self.checks.manifest)
        self.stage = Stage(dest_root, self.uri)
        self.stage.prepare()
        log.info("staging %s in %s until it is verified", self.shown, self.stage.root)
        return self.stage.root

    def observe(self, objects: Iterable[RemoteObject]) -> Iterator[RemoteObject]:
        return self.listing.observe(objects)

    def resolved(self, source: str, chain: Sequence[str], provider: str) -> None:
        self.record.source = redact(source)
        self.record.resolved = [redact(u) for u in chain[1:]]
        self.record.provider = provider

    # -- checks ----------------------------------------------------------------
    def _failing(self, error: StorageInitializerError) -> StorageInitializerError:
        self._verification_failed = True
        return error

    def _known_sha256(self) -> dict[str, str]:
        return {e.path: e.sha256 for e in self._entries if e.sha256}

    def listed_from(self, details: Mapping[str, str]) -> None:
        """What the provider says the source resolved to (a commit, a manifest digest)."""
        self.record.details = {str(k): redact(str(v)) for k, v in details.items()}

    def downloaded(
        self,
        hashes: Mapping[str, FileHashes] | None = None,
        details: Callable[[RemoteObject], Mapping[str, str]] | None = None,
    ) -> None:
        """After the transfer, before extraction: collect the files; check the digest pin.

        ``hashes``: what the engine hashed while downloading (the sha256 a pin needs among them);
        ``details``: the provider's per-file facts for the record.
        """
        self._entries = self.listing.entries(self.run.settings.verify_checksums, hashes, details)
        self.record.files = self._entries
        self.record.file_count, self.record.bytes = self.listing.totals()
        if self.checks.digest is None or self.stage is None:
            return
        try:
            actual = pins.check_digest(self.shown, self.stage.files(), self.checks.digest, self._known_sha256())
        except (IntegrityError, UsageError) as exc:
            raise self._failing(exc) from None
        how = "hashed after the download"
        for entry in self._entries:
            how = entry.pinned("--expect-digest", actual)
        self.record.pins["digest"] = f"sha256:{actual}"
        log.info("digest pin verified: sha256:%s (%s)", actual, how)

    def extracted(self, count: int) -> None:
        self.record.extracted = count

    def verify(self) -> None:
        """After extraction: the manifest pin, then the signature."""
        if self.stage is None:
            return
        files = self.stage.files()
        try:
            if self.checks.manifest:
                checked = pins.check_manifest(
                    self.checks.manifest, files, self._known_sha256(), self.checks.strict_manifest
                )
                ways: dict[str, int] = {}
                for entry in self._entries:
                    if entry.path in checked:
                        how = entry.pinned("--expect-manifest", checked[entry.path])
                        ways[how] = ways.get(how, 0) + 1
                after = len(checked) - sum(ways.values())  # files of an extracted archive
                if after:
                    ways["hashed after extraction"] = after
                self.record.pins["manifest"] = {"files": len(checked), "strict": self.checks.strict_manifest}
                summary = ", ".join(f"{n} {how}" for how, n in sorted(ways.items()))
                log.info("manifest pin verified: %d files (%s)", len(checked), summary)
            if self.checks.signature is not None:
                from storage_initializer.integrity import signing

                signature_file = self._signature_file()
                report = signing.verify_model(
                    self.stage.root, signature_file, self.checks.signature, files, self.stage.side
                )
                if not signature_file.startswith(self.stage.root + os.sep):
                    report.signature = redact(self.checks.signature_path)  # fetched: name it as given
                self.record.signature = report.as_json()
                log.info("signature verified (%s): %s", report.method, report.signature)
        except StorageInitializerError as exc:
            raise self._failing(exc) from None

    def _signature_file(self) -> str:
        assert self.stage is not None
        where = self.checks.signature_path
        if "://" not in where and not os.path.isabs(where):
            path = os.path.join(self.stage.root, *where.split("/"))
            if not os.path.isfile(path):
                raise IntegrityError(
                    f"no signature {where} at the root of {self.shown}",
                    hint="sign the model (model.sig at its root) or give --signature PATH_OR_URI",
                )
            return path
        local = os.path.join(self.stage.side, "signature.sig")
        try:
            self.fetch(where, local)
        except StorageInitializerError as exc:
            raise IntegrityError(f"cannot fetch the signature {redact(where)}: {exc}") from None
        return local

    # -- after ------------------------------------------------------------------
    def finish(self, error: StorageInitializerError | None) -> StorageInitializerError | None:
        """Publish a verified stage; discard a rejected one; keep it for a rerun otherwise."""
        if self.stage is not None:
            if error is None:
                try:
                    count = self.stage.publish()
                    log.info("published %d verified files of %s", count, self.shown)
                except BaseException as exc:
                    error = classify(exc)
            elif self._verification_failed:
                self.stage.discard()
                log.info("removed the rejected download of %s", self.shown)
        if error is not None:
            self.record.error = str(error)
        return error
