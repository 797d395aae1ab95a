"""The ``storage-initializer`` command: ``SRC_URI DEST_PATH [SRC_URI DEST_PATH ...]``.

Exactly the arguments KServe passes to its init container. Exit status: 0
when every pair succeeded, 2 for usage and configuration errors (an odd
argument count, a malformed URI, an unknown scheme), 143 after SIGTERM, 130
after SIGINT (Ctrl-C), 1 for any other failure. Each failure is one line on
stderr, the last lines of the output, also written to ``/dev/termination-log``
so ``kubectl describe pod`` shows it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from types import FrameType
from typing import Any, NoReturn

from storage_initializer import __version__
from storage_initializer.engine.progress import plural
from storage_initializer.errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CancelledError,
    StorageInitializerError,
)
from storage_initializer.integrity.options import IntegrityOptions, options_from
from storage_initializer.local import LINK_VARIABLE
from storage_initializer.redact import redact, register_env_secrets
from storage_initializer.settings import Settings, parse_size, settings_from_env

log = logging.getLogger("storage_initializer")

#: Seconds between SIGTERM and a hard exit if a worker is stuck in a read.
SIGNAL_GRACE_SECONDS = 5.0
TERMINATION_LOG_LIMIT = 4096  # what the kubelet keeps


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


class _Signals:
    """The first stopping signal received: the exit status is 128 + its number."""

    received: int | None = None

    @classmethod
    def exit_code(cls) -> int:
        return 128 + cls.received if cls.received else EXIT_INTERRUPTED


def _install_signal_handlers(cancel: threading.Event) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if cancel.is_set():
            os._exit(_Signals.exit_code())
        _Signals.received = signum
        cancel.set()
        log.warning("received %s: stopping; finished files and parts are kept for a rerun", name)

        def hard_exit() -> None:
            time.sleep(SIGNAL_GRACE_SECONDS)
            # A read that ignores the stop (a server holding the connection) does not get to
            # keep the process: the last line still says why it ended.
            log.error(
                "stopped by %s (reads still blocked after %gs); work done so far is kept", name, SIGNAL_GRACE_SECONDS
            )
            logging.shutdown()
            os._exit(_Signals.exit_code())

        threading.Thread(target=hard_exit, daemon=True).start()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def list_providers() -> int:
    from storage_initializer.registry import Registry

    registry = Registry.from_entry_points()
    for name, entry in sorted(registry.entries.items()):
        cls = entry.load()
        if cls is None:
            print(f"{name}  [{entry.distribution}]  BROKEN: {entry.error}; try {entry.install_hint}")
            continue
        formats = ", ".join(str(f) for f in cls.uri_formats) or "(none)"
        flags = " (fallback)" if cls.fallback else ""
        missing = entry.missing_requirements()
        status = f"  MISSING: {', '.join(missing)}; pip install {' '.join(missing)}" if missing else ""
        print(f"{name}  [{entry.distribution}]  {formats}{flags}{status}")
        if cls.description:
            print(f"    {cls.description}")
    return EXIT_OK


def local_pair_problem(uri: str, dest: str) -> str | None:
    """Why a local ``uri`` cannot be copied into ``dest`` (the same directory), or ``None``."""
    from storage_initializer.local import copy_onto_itself, local_path

    path = local_path(uri)
    is_local = path != uri or uri.startswith(("/", "./", "../")) or "://" not in uri
    return copy_onto_itself(path, dest) if is_local and os.path.exists(path) else None


def run(args: list[str], settings: Settings, integrity_options: IntegrityOptions | None = None) -> int:
    """Download the pairs in ``args``; return the exit status."""
    from storage_initializer.integrity.pair import IntegrityRun
    from storage_initializer.local import note_active_dest
    from storage_initializer.registry import Registry
    from storage_initializer.runner import Runner

    pairs = list(zip(args[0::2], args[1::2], strict=True))
    try:
        integrity = IntegrityRun(integrity_options or IntegrityOptions(), settings, pairs)
        runner = Runner(settings, Registry.from_entry_points(), integrity)  # opens the node cache
    except StorageInitializerError as exc:
        fail_usage(str(exc), settings)
    if threading.current_thread() is threading.main_thread():
        _install_signal_handlers(runner.engine.cancelled)
    log.info("storage-initializer %s: %d source%s", __version__, len(pairs), "" if len(pairs) == 1 else "s")
    for uri, dest in pairs:
        log.info("start: %s -> %s", redact(uri), dest)
        note_active_dest(dest)  # a local source walk leaves it out: no copy into itself
    started = time.monotonic()
    results = runner.run(pairs)
    seconds = time.monotonic() - started
    failures = [r for r in results if r.error is not None]
    for result in results:
        if result.error is None:
            log.info(
                "done: %s -> %s (%s, %d already complete)",
                result.uri,
                result.dest,
                plural(result.files, "file"),
                result.skipped,
            )
    lines = []
    for result in failures:
        assert result.error is not None
        cause = str(result.error)
        if isinstance(result.error, CancelledError) and _Signals.received:
            cause = (
                f"stopped by {signal.Signals(_Signals.received).name}; finished files and parts are kept for a rerun"
            )
        lines.append(redact(one_line(f"failed to download {result.uri} to {result.dest}: {cause}")))
    codes = {r.error.exit_code for r in failures if r.error is not None}
    # The record (--record), and on success a one-line summary for the pod status.
    digest: str | None = None
    try:
        digest = integrity.write_record()
    except StorageInitializerError as exc:
        lines.append(redact(one_line(str(exc))))
        codes.add(exc.exit_code)
    summary = runner.summary(results, seconds)
    if codes:
        summary = f"FAILED ({len(failures)} of {plural(len(results), 'source')}): {summary}"
    log.info("summary: %s", summary)
    # The ERROR lines come last, so `kubectl logs` (and a terminal) ends on the cause.
    for line in lines:
        log.error("%s", line)
    explicit = bool(settings.env.get("STORAGE_INITIALIZER_TERMINATION_LOG"))
    if not codes:
        write_termination_log(settings.termination_log, integrity.summary(digest) + "\n", explicit)
        return EXIT_OK
    write_termination_log(settings.termination_log, "\n".join(lines) + "\n", explicit)
    if EXIT_INTERRUPTED in codes or _Signals.received:
        return _Signals.exit_code()
    return EXIT_USAGE if codes == {EXIT_USAGE} else EXIT_FAILURE


def fail_usage(message: str, settings: Settings | None = None) -> NoReturn:
    """Say what is wrong with the command line or the settings, and exit with status 2."""
    print(f"storage-initializer: error: {redact(message)}", file=sys.stderr, flush=True)
    # Without settings (an invalid variable), the termination-log path comes from the
    # environment as it is: the error Kubernetes must show is exactly this one.
    explicit_path = (settings.env if settings is not None else os.environ).get("STORAGE_INITIALIZER_TERMINATION_LOG")
    path = explicit_path or (settings.termination_log if settings is not None else Settings().termination_log)
    write_termination_log(path, redact(message) + "\n", bool(explicit_path))
    raise SystemExit(EXIT_USAGE)


def start(
    args: list[str],
    *,
    verbose: bool = False,
    quiet: bool = False,
    overrides: Mapping[str, Any] | None = None,
    link: bool = False,
    integrity: Mapping[str, Any] | None = None,
) -> int:
    """Check the arguments and settings, then download; return the exit status.

    ``overrides`` are the option values given on the command line (``None``: not given);
    ``integrity`` the pin, signature and record options.
    """
    overrides = dict(overrides or {})
    try:
        settings = settings_from_env()
    except StorageInitializerError as exc:
        register_env_secrets(os.environ)
        fail_usage(str(exc))
    register_env_secrets(settings.env)
    if not args or len(args) % 2:
        fail_usage(
            f"expected SRC_URI DEST_PATH pairs, got {len(args)} argument(s)"
            " (usage: storage-initializer SRC_URI DEST_PATH [SRC_URI DEST_PATH ...])",
            settings,
        )
    for uri, dest in zip(args[0::2], args[1::2], strict=True):
        problem = local_pair_problem(uri, dest)
        if problem:
            fail_usage(f"{problem}: {uri} -> {dest} (choose another DEST_PATH)", settings)
    level = "DEBUG" if verbose else "WARNING" if quiet else settings.log_level
    try:
        part_size = overrides.pop("part_size", None)
        settings = settings.with_overrides(
            **overrides,
            part_size=parse_size(part_size, "--part-size") if part_size else None,
            log_level=level,
        )
        if link:  # read by the local provider from its environment, like the variable
            settings = replace(settings, env={**settings.env, LINK_VARIABLE: "true"})
    except StorageInitializerError as exc:
        fail_usage(str(exc), settings)
    try:
        integrity_options = options_from(settings.env, **(integrity or {}))
    except StorageInitializerError as exc:
        fail_usage(str(exc), settings)
    setup_logging(level)
    return run(args, settings, integrity_options)


def _exit(code: int) -> NoReturn:
    """Exit with ``code``, skipping the interpreter's teardown when nothing needs it.

    Freeing every module and object of a process that ends anyway took 15-18 ms
    (strace of a 4 KiB download: ~12% of the whole run). Logging and the standard
    streams are flushed first; nothing in this program registers ``atexit`` work,
    and a thread still running (none should) gets the ordinary exit, which waits for it.
    """
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def main() -> None:
    """Console-script entry point.

    SRC_URI DEST_PATH pairs alone (KServe's case) run at once; anything with an option
    goes through the option parser (:mod:`storage_initializer.cli_options`).
    """
    argv = sys.argv[1:]
    if argv and len(argv) % 2 == 0 and not any(arg.startswith("-") for arg in argv):
        _exit(start(argv))
    from storage_initializer.cli_options import app

    app()


if __name__ == "__main__":
    main()
