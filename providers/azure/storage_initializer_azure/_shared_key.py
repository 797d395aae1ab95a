"""Azure Storage's Shared Key authorization, for the requests the engine's event loop sends.

The string to sign follows the service's specification ("Authorize with
Shared Key", version 2009-09-19 and later) as azure-storage-blob's
``SharedKeyCredentialPolicy`` builds it: the verb, eleven standard headers
(``Content-Length`` empty when 0; the byte range travels as ``x-ms-range``),
the ``x-ms-*`` headers lower-cased and sorted, then ``/ACCOUNT`` + the URL's
path and its query parameters, sorted. The tests sign reads this way against
Azurite, which checks every signature.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import parse_qsl, urlsplit

_STANDARD = (
    "content-encoding",
    "content-language",
    "content-length",
    "content-md5",
    "content-type",
    "date",
    "if-modified-since",
    "if-match",
    "if-none-match",
    "if-unmodified-since",
    "range",
)


def string_to_sign(account: str, method: str, url: str, headers: Mapping[str, str]) -> str:
    lower = {name.lower(): value for name, value in headers.items() if value}
    if lower.get("content-length") == "0":
        del lower["content-length"]
    standard = "".join(lower.get(name, "") + "\n" for name in _STANDARD)
    x_ms = sorted((name, value) for name, value in lower.items() if name.startswith("x-ms-"))
    canonical_headers = "".join(f"{name}:{value}\n" for name, value in x_ms)
    parts = urlsplit(url)
    resource = f"/{account}{parts.path}"
    for name, value in sorted(parse_qsl(parts.query, keep_blank_values=True)):
        resource += f"\n{name.lower()}:{value}"
    return f"{method}\n{standard}{canonical_headers}{resource}"


def authorization(account: str, key: str, method: str, url: str, headers: Mapping[str, str]) -> str:
    """The ``Authorization`` header value for a request (``key``: the account key, base64)."""
    digest = hmac.new(
        base64.b64decode(key), string_to_sign(account, method, url, headers).encode(), hashlib.sha256
    ).digest()
    return f"SharedKey {account}:{base64.b64encode(digest).decode()}"
