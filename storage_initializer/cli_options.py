"""The command's options (typer): parsed only when the arguments hold an option.

KServe starts the init container with ``SRC_URI DEST_PATH`` pairs and nothing else;
:func:`storage_initializer.cli.main` runs those without importing typer (about 30 ms
of a pod's start). Anything else (``--help``, a flag) comes here.
"""

from __future__ import annotations

import math
from typing import Annotated, Optional

import typer

from storage_initializer import __version__
from storage_initializer.cli import fail_usage, list_providers, start
from storage_initializer.errors import EXIT_OK

app = typer.Typer(add_completion=False, rich_markup_mode=None, pretty_exceptions_enable=False)


@app.command(
    context_settings={"help_option_names": ["-h", "--help"]},
    help=(
        "Download each SRC_URI into DEST_PATH (KServe's storage-initializer contract). "
        "Pairs may repeat: SRC_URI DEST_PATH [SRC_URI DEST_PATH ...]. "
        "Each option also has an environment variable, named in its help; the README lists more "
        "variables (STORAGE_INITIALIZER_*) and each provider's own. "
        "Exit status: 0 success, 1 failure, 2 usage or configuration error, 130 after SIGINT, 143 after SIGTERM."
    ),
)
def main_command(
    args: Annotated[Optional[list[str]], typer.Argument(metavar="SRC_URI DEST_PATH ...", show_default=False)] = None,  # noqa: UP045
    list_providers_flag: Annotated[
        bool, typer.Option("--list-providers", help="Show installed providers and their URI formats.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Only warnings and errors [STORAGE_INITIALIZER_LOG_LEVEL=WARNING].")
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Debug logging [STORAGE_INITIALIZER_LOG_LEVEL=DEBUG].")
    ] = False,
    allow_pattern: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(
            "--allow-pattern",
            help="Only files matching (fnmatch on the relative path); repeatable [STORAGE_ALLOW_PATTERNS].",
        ),
    ] = None,
    ignore_pattern: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option("--ignore-pattern", help="Skip files matching; repeatable [STORAGE_IGNORE_PATTERNS]."),
    ] = None,
    concurrency: Annotated[
        Optional[int], typer.Option(min=1, help="Parallel transfers [STORAGE_INITIALIZER_CONCURRENCY].")  # noqa: UP045
    ] = None,
    part_size: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Ranged part size, e.g. 32M (default: adaptive) [STORAGE_INITIALIZER_PART_SIZE]."),
    ] = None,
    retries: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(min=0, help="Retries per transfer on transient errors [STORAGE_INITIALIZER_RETRIES]."),
    ] = None,
    stall_timeout: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(
            min=0.1, help="Seconds without a byte before a read counts as failed [STORAGE_INITIALIZER_STALL_TIMEOUT]."
        ),
    ] = None,
    provider: Annotated[
        Optional[str], typer.Option(help="Use this provider, whatever the URI matches [STORAGE_INITIALIZER_PROVIDER].")  # noqa: UP045
    ] = None,
    no_verify: Annotated[
        bool,
        typer.Option(
            "--no-verify", help="Check sizes only, not checksums [STORAGE_INITIALIZER_VERIFY_CHECKSUMS=false]."
        ),
    ] = False,
    no_extract: Annotated[
        bool,
        typer.Option(
            "--no-extract", help="Keep a single archive as it is [STORAGE_INITIALIZER_EXTRACT_ARCHIVES=false]."
        ),
    ] = False,
    fsync: Annotated[
        bool, typer.Option("--fsync", help="fsync each file before publishing it [STORAGE_INITIALIZER_FSYNC=true].")
    ] = False,
    link: Annotated[
        bool,
        typer.Option(
            "--link",
            help="Hard-link local sources instead of copying them: DEST then shares the source's files "
            "(writing into DEST edits the source) [STORAGE_INITIALIZER_LOCAL_LINK=true].",
        ),
    ] = False,
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
    if stall_timeout is not None and not math.isfinite(stall_timeout):  # click's range lets nan and inf through
        fail_usage(f"--stall-timeout {stall_timeout} is not a finite number of seconds")
    raise typer.Exit(
        start(
            args or [],
            verbose=verbose,
            quiet=quiet,
            overrides={
                "concurrency": concurrency,
                "part_size": part_size,
                "retries": retries,
                "stall_timeout": stall_timeout,
                "provider": provider,
                "allow_patterns": tuple(allow_pattern) if allow_pattern else None,
                "ignore_patterns": tuple(ignore_pattern) if ignore_pattern else None,
                "verify_checksums": False if no_verify else None,
                "extract_archives": False if no_extract else None,
                "fsync": True if fsync else None,
            },
            link=link,
            integrity={
                "digests": expect_digest,
                "manifests": expect_manifest,
                "strict_manifest": strict_manifest or None,
                "signature_key": signature_key,
                "signature_cert": signature_cert,
                "signer_identity": signer_identity,
                "signer_issuer": signer_issuer,
                "trust_root": trust_root,
                "signatures": signature,
                "record": record,
            },
        )
    )
