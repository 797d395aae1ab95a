"""Integrity options from flags and ``STORAGE_INITIALIZER_*`` variables.

Pins are per ``SRC_URI DEST`` pair. A pin value may start with one of the
pairs' SRC_URI followed by ``=`` (``s3://b/m.onnx=sha256:HEX``): it then
applies to that pair only; a value without such a prefix applies to every
pair. A flag may repeat; a variable holds one value or several separated by
whitespace. Flags given on the command line replace the variable.
Signature settings (key, certificate, identities, trust root) apply to every
pair; ``--signature`` may be keyed by SRC_URI like a pin.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from storage_initializer.errors import ConfigError

PREFIX = "STORAGE_INITIALIZER_"
DEFAULT_SIGNATURE = "model.sig"
_DIGEST_RE = re.compile(r"^sha256:([0-9a-fA-F]{64})$")


@dataclass(frozen=True)
class SignatureOptions:
    """How to verify a model signature; ``method`` is ``key``, ``certificate`` or ``sigstore``."""

    method: str
    key: str | None = None
    certificates: tuple[str, ...] = ()
    identity: str | None = None
    issuer: str | None = None
    trust_root: str | None = None


@dataclass(frozen=True)
class PairChecks:
    """The checks that apply to one pair."""

    digest: str | None = None  # lowercase sha256 hex
    manifest: str | None = None  # path of a sha256sum file
    strict_manifest: bool = False
    signature: SignatureOptions | None = None
    signature_path: str = DEFAULT_SIGNATURE

    @property
    def staged(self) -> bool:
        """Whether the pair must be staged, verified, then published."""
        return bool(self.digest or self.manifest or self.signature)


@dataclass(frozen=True)
class IntegrityOptions:
    """Every integrity option of a run, before it is split per pair."""

    digests: tuple[str, ...] = ()
    manifests: tuple[str, ...] = ()
    strict_manifest: bool = False
    signature: SignatureOptions | None = None
    signatures: tuple[str, ...] = ()
    record: str | None = None

    @property
    def active(self) -> bool:
        return bool(self.digests or self.manifests or self.signature or self.record)

    def for_pair(self, uri: str, uris: Sequence[str]) -> PairChecks:
        """The checks of the pair whose SRC_URI is ``uri`` (``uris``: every pair's)."""
        digest = _pick(self.digests, uri, uris, "--expect-digest")
        manifest = _pick(self.manifests, uri, uris, "--expect-manifest")
        signature_path = _pick(self.signatures, uri, uris, "--signature") or DEFAULT_SIGNATURE
        return PairChecks(
            digest=parse_digest(digest) if digest else None,
            manifest=manifest,
            strict_manifest=self.strict_manifest,
            signature=self.signature,
            signature_path=signature_path,
        )


def _split_keyed(value: str, uris: Sequence[str]) -> tuple[str | None, str]:
    """``(uri, rest)`` when ``value`` is ``URI=rest`` for one of ``uris``, else ``(None, value)``."""
    best: str | None = None
    for uri in uris:
        if value.startswith(uri + "=") and (best is None or len(uri) > len(best)):
            best = uri
    if best is None:
        return None, value
    return best, value[len(best) + 1 :]


def _pick(values: Sequence[str], uri: str, uris: Sequence[str], flag: str) -> str | None:
    """The value that applies to ``uri``: one keyed by it, else an unkeyed one."""
    keyed: list[str] = []
    general: list[str] = []
    for value in values:
        key, rest = _split_keyed(value, uris)
        if key is None:
            general.append(rest)
        elif key == uri:
            keyed.append(rest)
    chosen = keyed or general
    if len(set(chosen)) > 1:
        raise ConfigError(
            f"{flag} gives {len(chosen)} different values for {uri}",
            hint="give one value per pair, as SRC_URI=VALUE when several pairs run",
        )
    return chosen[0] if chosen else None


def parse_digest(text: str) -> str:
    """``sha256:HEX`` -> lowercase hex; anything else is a usage error."""
    match = _DIGEST_RE.match(text.strip())
    if not match:
        raise ConfigError(
            f"--expect-digest {text!r} is not a sha256 digest",
            hint="use sha256: followed by 64 hex digits, e.g. the output of sha256sum",
        )
    return match.group(1).lower()


def _env_list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple((env.get(PREFIX + name) or "").split())


def _env_str(env: Mapping[str, str], name: str) -> str | None:
    value = (env.get(PREFIX + name) or "").strip()
    return value or None


def _env_bool(env: Mapping[str, str], name: str) -> bool:
    value = (env.get(PREFIX + name) or "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise ConfigError(f"{PREFIX}{name}={value!r} is not a boolean", hint="use true or false")


def options_from(
    env: Mapping[str, str] | None = None,
    *,
    digests: Sequence[str] | None = None,
    manifests: Sequence[str] | None = None,
    strict_manifest: bool | None = None,
    signature_key: str | None = None,
    signature_cert: Sequence[str] | None = None,
    signer_identity: str | None = None,
    signer_issuer: str | None = None,
    trust_root: str | None = None,
    signatures: Sequence[str] | None = None,
    record: str | None = None,
) -> IntegrityOptions:
    """Merge flags (given: not ``None``) over the variables; validate the combination."""
    env = os.environ if env is None else env
    key = signature_key or _env_str(env, "SIGNATURE_KEY")
    certs = tuple(signature_cert or ()) or _env_list(env, "SIGNATURE_CERT")
    identity = signer_identity or _env_str(env, "SIGNER_IDENTITY")
    issuer = signer_issuer or _env_str(env, "SIGNER_ISSUER")
    root = trust_root or _env_str(env, "TRUST_ROOT")
    return IntegrityOptions(
        digests=tuple(digests or ()) or _env_list(env, "EXPECT_DIGEST"),
        manifests=tuple(manifests or ()) or _env_list(env, "EXPECT_MANIFEST"),
        strict_manifest=strict_manifest or _env_bool(env, "STRICT_MANIFEST"),
        signature=_signature_options(key, certs, identity, issuer, root),
        signatures=tuple(signatures or ()) or _env_list(env, "SIGNATURE"),
        record=record or _env_str(env, "RECORD"),
    )


def _signature_options(
    key: str | None, certs: tuple[str, ...], identity: str | None, issuer: str | None, root: str | None
) -> SignatureOptions | None:
    modes = [name for name, given in (("--signature-key", key), ("--signature-cert", certs)) if given]
    if identity or issuer or root:
        modes.append("--signer-identity/--signer-issuer/--trust-root")
    if len(modes) > 1:
        raise ConfigError(
            f"choose one way to verify the model signature, not {' and '.join(modes)}",
            hint="a public key, a certificate chain, or sigstore identities with a trust root",
        )
    if key:
        _must_exist(key, "--signature-key")
        return SignatureOptions("key", key=key)
    if certs:
        for cert in certs:
            _must_exist(cert, "--signature-cert")
        return SignatureOptions("certificate", certificates=certs)
    if not (identity or issuer or root):
        return None
    missing = [
        flag
        for flag, value in (("--signer-identity", identity), ("--signer-issuer", issuer), ("--trust-root", root))
        if not value
    ]
    if missing:
        raise ConfigError(
            f"sigstore verification needs {', '.join(missing)} as well",
            hint="give the signer's identity (e.g. an email), its OIDC issuer and the trust root file"
            " (offline: no default trust root is fetched)",
        )
    assert root is not None
    _must_exist(root, "--trust-root")
    return SignatureOptions("sigstore", identity=identity, issuer=issuer, trust_root=root)


def _must_exist(path: str, flag: str) -> None:
    if not os.path.isfile(path):
        raise ConfigError(f"{flag} {path}: no such file", hint="check the path and the volume mount")
