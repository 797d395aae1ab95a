"""AWS Signature Version 4 for the bodiless S3 requests the provider sends (GET, HEAD).

botocore's ``S3SigV4Auth`` costs ~240 us per request here (request objects,
header normalisation, four HMACs for the signing key); for many small objects
that is most of the per-object CPU. This signer does the same computation for
the only request shape the read path sends, and caches the signing key per
day and region: ~10 us. The ``Range`` and ``If-Match`` headers are sent
unsigned, which SigV4 allows (only ``host`` and ``x-amz-*`` must be signed).
The listing and ``HEAD`` requests use it too (with a canonical query string
and an ``x-amz-checksum-mode`` header).

The canonical URI is the path exactly as sent: S3 does not normalise or
double-encode it, and the caller percent-encodes keys once (``quote(key,
safe="/~")``, as botocore does). Credentials are passed in for every request
so refreshed credentials (IRSA, session tokens) are always the current ones.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from urllib.parse import quote

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_ALGORITHM = "AWS4-HMAC-SHA256"


class SigV4Signer:
    """Thread-safe SigV4 header signer for unsigned-body S3 requests."""

    def __init__(self, region: str, service: str = "s3") -> None:
        self.region = region
        self.service = service
        self._keys: dict[tuple[str, str], bytes] = {}
        self._lock = threading.Lock()

    def _signing_key(self, secret_key: str, date: str) -> bytes:
        cache_key = (secret_key, date)
        key = self._keys.get(cache_key)
        if key is None:
            key = _hmac(("AWS4" + secret_key).encode(), date)
            for part in (self.region, self.service, "aws4_request"):
                key = _hmac(key, part)
            with self._lock:
                if len(self._keys) > 8:
                    self._keys.clear()
                self._keys[cache_key] = key
        return key

    def sign(
        self,
        method: str,
        host: str,
        path: str,
        access_key: str,
        secret_key: str,
        token: str | None = None,
        *,
        query: str = "",
        amz_headers: dict[str, str] | None = None,
        now: float | None = None,
    ) -> dict[str, str]:
        """The headers that authenticate ``METHOD host path?query``.

        ``query`` must already be canonical (see :func:`canonical_query`);
        ``amz_headers`` are further ``x-amz-*`` headers to send, which SigV4
        requires to be signed.
        """
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
        date = amz_date[:8]
        headers = {"host": host, "x-amz-content-sha256": EMPTY_SHA256, "x-amz-date": amz_date}
        if token:
            headers["x-amz-security-token"] = token
        if amz_headers:
            headers.update((name.lower(), value.strip()) for name, value in amz_headers.items())
        names = sorted(headers)
        signed = ";".join(names)
        canonical = "\n".join(
            [method, path, query, *(f"{name}:{headers[name]}" for name in names), "", signed, EMPTY_SHA256]
        )
        scope = f"{date}/{self.region}/{self.service}/aws4_request"
        to_sign = f"{_ALGORITHM}\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        # hmac.digest: OpenSSL's one-shot HMAC, without hmac.new's Python object per call.
        signature = hmac.digest(self._signing_key(secret_key, date), to_sign.encode(), "sha256").hex()
        headers["authorization"] = (
            f"{_ALGORITHM} Credential={access_key}/{scope}, SignedHeaders={signed}, Signature={signature}"
        )
        return headers


def canonical_query(params: dict[str, str]) -> str:
    """A query string in SigV4 canonical form (sorted, RFC 3986 encoded); send it as is."""
    return "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params.items()))


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.digest(key, message.encode(), "sha256")
