"""S3 error codes -> the storage-initializer error hierarchy, with what to check.

Used for botocore ``ClientError``s (listing, HEAD) and for the XML error body
of the direct GETs, so both paths say the same thing for the same failure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from storage_initializer import http as kit
from storage_initializer.errors import (
    AccessDeniedError,
    ConfigError,
    NotFoundError,
    ObjectChangedError,
    StorageInitializerError,
)

CREDENTIALS_HINT = (
    "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the storage secret), AWS_SESSION_TOKEN, "
    "IRSA (AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE), or set awsAnonymousCredential=true for a public bucket"
)
ENDPOINT_HINT = "check AWS_ENDPOINT_URL (or S3_ENDPOINT + S3_USE_HTTPS) and AWS_DEFAULT_REGION"

_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "TooManyRequests",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "InternalError",
        "ServiceUnavailable",
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
        "OperationAborted",
        "BandwidthLimitExceeded",
        "EC2ThrottledException",
        "IDPCommunicationError",
    }
)

_CODE_RE = re.compile(rb"<Code>([^<]{1,200})</Code>")
_MESSAGE_RE = re.compile(rb"<Message>([^<]{0,1000})</Message>")
_REGION_RE = re.compile(rb"<Region>([^<]{1,64})</Region>")


def parse_error_body(body: bytes) -> tuple[str | None, str | None, str | None]:
    """``(Code, Message, Region)`` from an S3 XML error body (any may be missing)."""

    def find(pattern: re.Pattern[bytes]) -> str | None:
        match = pattern.search(body)
        return match.group(1).decode("utf-8", "replace").strip() if match else None

    return find(_CODE_RE), find(_MESSAGE_RE), find(_REGION_RE)


def error_for(
    status: int,
    code: str | None,
    message: str | None,
    *,
    uri: str,
    bucket: str,
    key: str | None,
    endpoint: str,
    region: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> StorageInitializerError:
    """The error an S3 answer stands for. ``key`` is ``None`` for bucket-level requests.

    ``headers`` (the answer's) carry a ``Retry-After`` a transient error keeps.
    """
    shown = uri
    detail = f"{code or f'HTTP {status}'}" + (f": {message}" if message else "")
    where = f"bucket {bucket!r} at {endpoint}"
    code = code or ""
    if code == "NoSuchBucket" or (status == 404 and key is None and not code):
        return NotFoundError(
            f"{shown}: {where} does not exist ({detail})",
            hint="check the bucket name in the URI; " + ENDPOINT_HINT,
        )
    if code in ("NoSuchKey", "NotFound") or status in (404, 410):
        return NotFoundError(f"{shown}: object {key!r} not found in {where} ({detail})", hint="check the path")
    if code in ("InvalidAccessKeyId", "InvalidClientTokenId", "UnrecognizedClientException"):
        return AccessDeniedError(
            f"{shown}: {where} does not know the access key ({detail})",
            hint=CREDENTIALS_HINT + "; the key may also belong to another endpoint: " + ENDPOINT_HINT,
        )
    if code == "SignatureDoesNotMatch":
        return AccessDeniedError(
            f"{shown}: {where} rejected the request signature ({detail})",
            hint="the secret key does not match the access key: check AWS_SECRET_ACCESS_KEY (or the storage secret)",
        )
    if code in ("ExpiredToken", "TokenRefreshRequired", "InvalidToken", "ExpiredTokenException"):
        return AccessDeniedError(
            f"{shown}: {where} refused the session token ({detail})",
            hint="AWS_SESSION_TOKEN is expired or invalid; use refreshable credentials (IRSA) or renew it",
        )
    if code == "RequestTimeTooSkewed":
        return AccessDeniedError(f"{shown}: {where}: {detail}", hint="the local clock is wrong: fix the node's time")
    if code in ("PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException") or (
        status in (301, 307) and not code
    ):
        fix = f"set AWS_DEFAULT_REGION={region}" if region else "set AWS_DEFAULT_REGION to the bucket's region"
        return ConfigError(f"{shown}: {where} is in another region or endpoint ({detail})", hint=fix)
    if code in ("PreconditionFailed", "InvalidRange") or status in (412, 416):
        return ObjectChangedError(
            f"{shown}: object {key!r} changed during the download ({detail})",
            hint="run again to download the new version",
        )
    if code == "AccessDenied" or code == "AllAccessDisabled" or status in (401, 403):
        return AccessDeniedError(
            f"{shown}: {where} denied access ({detail})",
            hint="the identity needs s3:ListBucket on the bucket and s3:GetObject on the objects; " + CREDENTIALS_HINT,
        )
    if code in _TRANSIENT_CODES or kit.is_transient_status(status):
        return kit.transient_error(f"{shown}: {where} answered {status} ({detail})", headers)
    return StorageInitializerError(f"{shown}: {where} answered HTTP {status} ({detail})")
