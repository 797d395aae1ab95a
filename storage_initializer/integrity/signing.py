"""Verify an OpenSSF model signature (``model-signing``'s sigstore bundle) over a staged model.

The ``model-signing`` package is an optional extra (``storage-initializer[signing]``,
in the default image) imported only when a signature check is asked for.
Which files the signature covers follows the spec's defaults: every file of
the model except git's (``.git/``, ``.gitattributes``, ``.github/``,
``.gitignore``), the paths the signer recorded as ignored, and the signature
itself; those are reported. The hashing method (whole files or shards, the
hash algorithm) is read from the bundle's payload: the verifier then checks
that the signed manifest matches, so a lie there cannot pass.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import pathlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from storage_initializer.engine.paths import STATE_DIR_NAME
from storage_initializer.errors import ConfigError, IntegrityError
from storage_initializer.integrity.options import SignatureOptions

log = logging.getLogger("storage_initializer")

GIT_PATHS = (".git/", ".gitattributes", ".github/", ".gitignore")
_TRUST_CONFIG_TYPE = "application/vnd.dev.sigstore.clienttrustconfig.v0.1+json"


@dataclass
class SignatureReport:
    """What the record says about a verified signature."""

    method: str
    signature: str
    ignored: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"method": self.method, "signature": self.signature, "verified": True, "ignored": self.ignored}


def _import_model_signing() -> Any:
    try:
        import model_signing.hashing
        import model_signing.verifying
    except ImportError as exc:
        raise ConfigError(
            f"verifying a model signature needs the model-signing package ({exc})",
            hint="pip install 'storage-initializer[signing]' (the default image has it)",
        ) from None
    return model_signing


def _serialization(signature_file: str) -> Mapping[str, Any]:
    """The hashing method the signer recorded (read before verification; the verifier checks it)."""
    try:
        with open(signature_file, encoding="utf-8") as handle:
            bundle = json.load(handle)
        payload = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
        serialization = payload["predicate"]["serialization"]
    except OSError as exc:
        raise IntegrityError(f"cannot read the signature {signature_file}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError):
        raise IntegrityError(
            f"the signature {os.path.basename(signature_file)} is not a model-signing sigstore bundle",
            hint="sign the model with model-signing (model_signing sign ...)",
        ) from None
    if not isinstance(serialization, dict):
        raise IntegrityError(f"the signature {os.path.basename(signature_file)} has no serialization description")
    return serialization


def _hashing_config(ms: Any, serialization: Mapping[str, Any], ignored: list[str]) -> Any:
    config = ms.hashing.Config()
    allow_symlinks = bool(serialization.get("allow_symlinks", False))
    if serialization.get("method") == "shards":
        config.use_shard_serialization(
            hashing_algorithm=serialization.get("hash_type", "sha256"),
            shard_size=int(serialization.get("shard_size", 1_000_000_000)),
            allow_symlinks=allow_symlinks,
        )
    else:
        config.use_file_serialization(
            hashing_algorithm=serialization.get("hash_type", "sha256"), allow_symlinks=allow_symlinks
        )
    config.set_ignored_paths(paths=ignored, ignore_git_paths=True)
    return config


def _trust_config_text(trust_root: str) -> tuple[str, bool]:
    """(client trust config JSON, whether the file already was one): a bare ``trusted_root.json`` is wrapped.

    Only the trusted root is used to verify (the signing config is for signers).
    """
    try:
        with open(trust_root, encoding="utf-8") as handle:
            text = handle.read()
        doc = json.loads(text)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--trust-root {trust_root} is not a JSON file: {exc}") from None
    media = str(doc.get("mediaType", "")) if isinstance(doc, dict) else ""
    if media.startswith("application/vnd.dev.sigstore.clienttrustconfig"):
        return text, True
    if not media.startswith("application/vnd.dev.sigstore.trustedroot"):
        raise ConfigError(
            f"--trust-root {trust_root} is neither a sigstore trusted root nor a client trust config",
            hint="use trusted_root.json of your sigstore instance (application/vnd.dev.sigstore.trustedroot+json)",
        )
    wrapped = {
        "mediaType": _TRUST_CONFIG_TYPE,
        "trustedRoot": doc,
        "signingConfig": {"mediaType": "application/vnd.dev.sigstore.signingconfig.v0.2+json"},
    }
    return json.dumps(wrapped), False


def trust_config_file(trust_root: str, side_dir: str) -> str:
    """A sigstore client trust config file for ``model-signing``: the file itself, or a wrapped copy."""
    text, as_is = _trust_config_text(trust_root)
    if as_is:
        return trust_root
    path = os.path.join(side_dir, "trust-config.json")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path


def preflight(options: SignatureOptions) -> None:
    """Load the key, the certificates or the trust root now: a bad one fails before any download."""
    ms = _import_model_signing()
    config = ms.verifying.Config()
    try:
        if options.method == "key":
            config.use_elliptic_key_verifier(public_key=options.key)
        elif options.method == "certificate":
            config.use_certificate_verifier(certificate_chain=list(options.certificates))
        else:
            assert options.trust_root is not None
            from sigstore import models, verify

            text, _ = _trust_config_text(options.trust_root)
            verify.Verifier(trusted_root=models.ClientTrustConfig.from_json(text).trusted_root)
    except ConfigError:
        raise
    except Exception as exc:
        flag = {"key": "--signature-key", "certificate": "--signature-cert"}.get(options.method, "--trust-root")
        raise ConfigError(f"{flag}: cannot load it for the {options.method} signature check: {_text(exc)}") from None


def verify_model(
    model_root: str,
    signature_file: str,
    options: SignatureOptions,
    files: Iterable[str],
    side_dir: str,
) -> SignatureReport:
    """Verify ``signature_file`` over the model at ``model_root``; raise :class:`IntegrityError` if it fails.

    ``files`` are the model's relative paths (to report the ones the signature does not cover).
    """
    ms = _import_model_signing()
    serialization = _serialization(signature_file)
    recorded = [str(p) for p in serialization.get("ignore_paths", []) or []]
    ignored = [*recorded, STATE_DIR_NAME]
    root = pathlib.Path(model_root)
    signature_path = pathlib.Path(signature_file)
    inside = signature_path.is_relative_to(root)
    if inside:
        ignored.append(signature_path.relative_to(root).as_posix())
    config = ms.verifying.Config()
    try:
        if options.method == "key":
            config.use_elliptic_key_verifier(public_key=options.key)
        elif options.method == "certificate":
            config.use_certificate_verifier(certificate_chain=list(options.certificates))
        else:
            assert options.trust_root is not None and options.identity and options.issuer
            trust = trust_config_file(options.trust_root, side_dir)
            config.use_sigstore_verifier(
                identity=options.identity, oidc_issuer=options.issuer, trust_config=pathlib.Path(trust)
            )
        config.set_hashing_config(_hashing_config(ms, serialization, ignored))
        config.verify(root, signature_path)
    except ConfigError:
        raise
    except Exception as exc:
        raise IntegrityError(f"signature check ({options.method}) failed: {_describe(exc)}") from None
    skipped = [*GIT_PATHS, *recorded]
    if inside:
        skipped.append(signature_path.relative_to(root).as_posix())
    not_covered = sorted(f for f in files if any(_under(f, p) for p in skipped))
    if not_covered:
        log.info("the signature does not cover (ignored by the model-signing rules): %s", ", ".join(not_covered))
    shown = signature_path.relative_to(root).as_posix() if inside else os.path.basename(signature_file)
    return SignatureReport(options.method, shown, not_covered)


def _under(relpath: str, ignored: str) -> bool:
    ignored = ignored.rstrip("/")
    return relpath == ignored or relpath.startswith(ignored + "/")


# The library's message is the repr of a list of strings: quotes may come escaped.
_MISMATCH = re.compile(r"Hash mismatch for \\?'([^'\\]*)\\?'")
_LISTED = re.compile(r"(Extra|Missing) files (?:found )?in model \\?'[^'\\]*\\?': ([^\"'\\\]]*)")


def _describe(exc: BaseException) -> str:
    """The library's manifest diff (with raw digest bytes) in plain words; other errors as they are."""
    text = str(exc)
    if not text.startswith("Signature mismatch"):
        return _text(exc)
    parts = []
    for kind, names in _LISTED.findall(text):
        what = "files the signature does not cover" if kind == "Extra" else "signed files missing"
        parts.append(f"{what}: {names.strip()}")
    changed = _MISMATCH.findall(text)
    if changed:
        parts.append(f"content differs from the signed model: {', '.join(changed)}")
    return _text(ValueError("; ".join(parts))) if parts else _text(exc)


def _text(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 1500 else text[:1497] + "..."
