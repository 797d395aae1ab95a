"""The ``storage-initializer`` command: ``SRC_URI DEST_PATH [SRC_URI DEST_PATH ...]``.

Exactly the arguments KServe passes to its init container. Exit status: 0
when every pair succeeded, 2 for usage and configuration errors (an odd
argument count, a malformed URI, an unknown scheme), 143 after SIGTERM, 1 for
any other failure. Each failure is one line on stderr, also written to
``/dev/termination-log`` so ``kubectl describe pod`` shows it.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import Annotated, Optional

import typer

from storage_initializer import __version__
from storage_initializer.errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    StorageInitializerError,
)
from storage_initializer.integrity.options import IntegrityOptions, options_from
from storage_initializer.redact import redact, register_env_secrets
from storage_initializer.settings import Settings, parse_size, settings_from_env

log = logging.getLogger("storage_initializer")

#: Seconds between SIGTERM and a hard exit if a worker is stuck in a read.
SIGNAL_GRACE_SECONDS = 5.0
TERMINATION_LOG_LIMIT = 4096  # what the kubelet keeps

app = typer.Typer(add_completion=False, rich_markup_mode=None, pretty_exceptions_enable=False)


def one_line(text: str) -> str:
    """``text`` with its line breaks folded: one event, one line (SDK messages often span several)."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


class _RedactingFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        return one_line(super().formatMessage(record))  # a traceback (exc_info) keeps its lines

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_RedactingFormatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    log.setLevel(level)


def write_termination_log(path: str, text: str, explicit: bool) -> None:
    """Write ``text`` where Kubernetes looks for the termination message.

    The default path is written only if it exists (the kubelet creates it);
    a path set explicitly is created.
    """
    if not explicit and not os.path.exists(path):
        return
    try:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(redact(text)[:TERMINATION_LOG_LIMIT])
    except OSError:
        pass


def _install_signal_handlers(cancel: threading.Event) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if cancel.is_set():
            os._exit(EXIT_INTERRUPTED)
        cancel.set()
        log.warning("received %s: stopping; finished files and parts are kept for a rerun", name)

        def hard_exit() -> None:
            time.sleep(SIGNAL_GRACE_SECONDS)
            logging.shutdown()
            os._exit(EXIT_INTERRUPTED)

        threading.Thread(target=hard_exit, daemon=True).start()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def list_providers() -> int:
    from storage_initializer.registry import Registry

    registry = Registry.from_entry_points()
    for name, entry in sorted(registry.entries.items()):
        cls = entry.load()
        if cls is None:
            typer.echo(f"{name}  [{entry.distribution}]  BROKEN: {entry.error}; try {entry.install_hint}")
            continue
        formats = ", ".join(str(f) for f in cls.uri_formats) or "(none)"
        flags = " (fallback)" if cls.fallback else ""
        missing = entry.missing_requirements()
        status = f"  MISSING: {', '.join(missing)}; pip install {' '.join(missing)}" if missing else ""
        typer.echo(f"{name}  [{entry.distribution}]  {formats}{flags}{status}")
        if cls.description:
            typer.echo(f"    {cls.description}")
    return EXIT_OK


def run(args: list[str], settings: Settings, integrity_options: IntegrityOptions | None = None) -> int:
    """Download the pairs in ``args``; return the exit status."""
    from storage_initializer.integrity.pair import IntegrityRun
    from storage_initializer.registry import Registry
    from storage_initializer.runner import Runner

    pairs = list(zip(args[0::2], args[1::2], strict=True))
    try:
        integrity = IntegrityRun(integrity_options or IntegrityOptions(), settings, pairs)
        runner = Runner(settings, Registry.from_entry_points(), integrity)  # opens the node cache
    except StorageInitializerError as exc:
        _fail_usage(str(exc), settings)
    if threading.current_thread() is threading.main_thread():
        _install_signal_handlers(runner.engine.cancelled)
    log.info("storage-initializer %s: %d source(s)", __version__, len(pairs))
    for uri, dest in pairs:
        log.info("start: %s -> %s", redact(uri), dest)
    started = time.monotonic()
    results = runner.run(pairs)
    seconds = time.monotonic() - started
    failures = [r for r in results if r.error is not None]
    for result in results:
        if result.error is None:
            log.info(
                "done: %s -> %s (%d files, %d already complete)", result.uri, result.dest, result.files, result.skipped
            )
    lines = []
    for result in failures:
        assert result.error is not None
        lines.append(redact(one_line(f"failed to download {result.uri} to {result.dest}: {result.error}")))
    for line in lines:
        log.error("%s", line)
    log.info("summary: %s", runner.summary(results, seconds))
    explicit = bool(settings.env.get("STORAGE_INITIALIZER_TERMINATION_LOG"))
    # The record (--record), and on success a one-line summary for the pod status.
    codes = {r.error.exit_code for r in failures if r.error is not None}
    digest: str | None = None
    try:
        digest = integrity.write_record()
    except StorageInitializerError as exc:
        lines.append(redact(one_line(str(exc))))
        log.error("%s", lines[-1])
        codes.add(exc.exit_code)
    if not codes:
        write_termination_log(settings.termination_log, integrity.summary(digest) + "\n", explicit)
        return EXIT_OK
    write_termination_log(settings.termination_log, "\n".join(lines) + "\n", explicit)
    if EXIT_INTERRUPTED in codes:
        return EXIT_INTERRUPTED
    return EXIT_USAGE if codes == {EXIT_USAGE} else EXIT_FAILURE


def _fail_usage(message: str, settings: Settings | None = None) -> None:
    typer.echo(f"storage-initializer: error: {redact(message)}", err=True)
    # Without settings (an invalid variable), the termination-log path comes from the
    # environment as it is: the error Kubernetes must show is exactly this one.
    explicit_path = (settings.env if settings is not None else os.environ).get("STORAGE_INITIALIZER_TERMINATION_LOG")
    path = explicit_path or (settings.termination_log if settings is not None else Settings().termination_log)
    write_termination_log(path, redact(message) + "\n", bool(explicit_path))
    raise typer.Exit(EXIT_USAGE)


@app.command(
    context_settings={"help_option_names": ["-h", "--help"]},
    help=(
        "Download each SRC_URI into DEST_PATH (KServe's storage-initializer contract). "
        "Pairs may repeat: SRC_URI DEST_PATH [SRC_URI DEST_PATH ...]. "
        "Every option also has a STORAGE_INITIALIZER_* environment variable."
    ),
)
def main_command(
    args: Annotated[Optional[list[str]], typer.Argument(metavar="SRC_URI DEST_PATH ...", show_default=False)] = None,  # noqa: UP045
    list_providers_flag: Annotated[
        bool, typer.Option("--list-providers", help="Show installed providers and their URI formats.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    allow_pattern: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option("--allow-pattern", help="Only files matching (fnmatch on the relative path); repeatable."),
    ] = None,
    ignore_pattern: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option("--ignore-pattern", help="Skip files matching; repeatable."),
    ] = None,
    concurrency: Annotated[Optional[int], typer.Option(min=1, help="Parallel transfers.")] = None,  # noqa: UP045
    part_size: Annotated[Optional[str], typer.Option(help="Ranged part size, e.g. 32M (default: adaptive).")] = None,  # noqa: UP045
    retries: Annotated[Optional[int], typer.Option(min=0, help="Retries per transfer on transient errors.")] = None,  # noqa: UP045
    stall_timeout: Annotated[
        Optional[float], typer.Option(min=0.1, help="Seconds without a byte before a read counts as failed.")  # noqa: UP045
    ] = None,
    provider: Annotated[Optional[str], typer.Option(help="Use this provider, whatever the URI matches.")] = None,  # noqa: UP045
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Check sizes only, not checksums.")] = False,
    no_extract: Annotated[bool, typer.Option("--no-extract", help="Keep a single archive as it is.")] = False,
    fsync: Annotated[bool, typer.Option("--fsync", help="fsync each file before publishing it.")] = False,
    expect_digest: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(help="[SRC_URI=]sha256:HEX: the one file (or archive) must have this sha256."),
    ] = None,
    expect_manifest: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(help="[SRC_URI=]FILE: a sha256sum file every listed model file must match."),
    ] = None,
    strict_manifest: Annotated[
        bool, typer.Option("--strict-manifest", help="With --expect-manifest: no other file may exist.")
    ] = False,
    signature_key: Annotated[
        Optional[str], typer.Option(help="Verify the model signature with this public key (PEM).")  # noqa: UP045
    ] = None,
    signature_cert: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(help="Verify the model signature with this certificate chain (PEM); repeatable."),
    ] = None,
    signer_identity: Annotated[
        Optional[str], typer.Option(help="Sigstore keyless: the signer's identity (e.g. an email).")  # noqa: UP045
    ] = None,
    signer_issuer: Annotated[
        Optional[str], typer.Option(help="Sigstore keyless: the signer's OIDC issuer.")  # noqa: UP045
    ] = None,
    trust_root: Annotated[
        Optional[str], typer.Option(help="Sigstore keyless: the trust root file (offline).")  # noqa: UP045
    ] = None,
    signature: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(help="[SRC_URI=]PATH_OR_URI of the signature (default: model.sig at the model's root)."),
    ] = None,
    record: Annotated[
        Optional[str], typer.Option(help="Write a JSON record of what was downloaded and verified.")  # noqa: UP045
    ] = None,
    version: Annotated[bool, typer.Option("--version", help="Print the version.")] = False,
) -> None:
    if version:
        typer.echo(f"storage-initializer {__version__}")
        raise typer.Exit(EXIT_OK)
    if list_providers_flag:
        raise typer.Exit(list_providers())
    try:
        settings = settings_from_env()
    except StorageInitializerError as exc:
        register_env_secrets(os.environ)
        _fail_usage(str(exc))
        return
    register_env_secrets(settings.env)
    args = args or []
    if not args or len(args) % 2:
        _fail_usage(
            f"expected SRC_URI DEST_PATH pairs, got {len(args)} argument(s)"
            " (usage: storage-initializer SRC_URI DEST_PATH [SRC_URI DEST_PATH ...])",
            settings,
        )
    level = "DEBUG" if verbose else "WARNING" if quiet else settings.log_level
    if stall_timeout is not None and not math.isfinite(stall_timeout):  # click's range lets nan and inf through
        _fail_usage(f"--stall-timeout {stall_timeout} is not a finite number of seconds", settings)
    try:
        settings = settings.with_overrides(
            concurrency=concurrency,
            part_size=parse_size(part_size, "--part-size") if part_size else None,
            retries=retries,
            stall_timeout=stall_timeout,
            provider=provider,
            allow_patterns=tuple(allow_pattern) if allow_pattern else None,
            ignore_patterns=tuple(ignore_pattern) if ignore_pattern else None,
            verify_checksums=False if no_verify else None,
            extract_archives=False if no_extract else None,
            fsync=True if fsync else None,
            log_level=level,
        )
    except StorageInitializerError as exc:
        _fail_usage(str(exc), settings)
    try:
        integrity_options = options_from(
            settings.env,
            digests=expect_digest,
            manifests=expect_manifest,
            strict_manifest=strict_manifest or None,
            signature_key=signature_key,
            signature_cert=signature_cert,
            signer_identity=signer_identity,
            signer_issuer=signer_issuer,
            trust_root=trust_root,
            signatures=signature,
            record=record,
        )
    except StorageInitializerError as exc:
        _fail_usage(str(exc), settings)
    setup_logging(level)
    raise typer.Exit(run(args, settings, integrity_options))


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
