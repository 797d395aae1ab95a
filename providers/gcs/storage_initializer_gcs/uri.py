"""The ``gs://BUCKET[/PATH]`` grammar."""

from __future__ import annotations

import re
from dataclasses import dataclass

from storage_initializer.errors import UsageError

PREFIX = "gs://"
GRAMMAR = "gs://BUCKET[/PATH]"
# Bucket names: 3-63 characters (up to 222 with dots), lowercase letters,
# digits, '-', '_' and '.', starting and ending with a letter or digit.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")


# -- the URI -----------------------------------------------------------------------
@dataclass(frozen=True)
class GcsUri:
    bucket: str
    path: str  # "" = the bucket root; a trailing "/" names a directory only

    def __str__(self) -> str:
        return f"{PREFIX}{self.bucket}/{self.path}" if self.path else f"{PREFIX}{self.bucket}"


def parse_uri(uri: str) -> GcsUri:
    """Split ``gs://BUCKET[/PATH]``; the path is taken literally (no %-decoding), as KServe does."""
    if not uri.startswith(PREFIX):
        raise UsageError(f"{uri} is not a gs:// URI", hint=f"expected {GRAMMAR}")
    bucket, _, path = uri[len(PREFIX) :].partition("/")
    if not bucket:
        raise UsageError(f"{uri} names no bucket", hint=f"expected {GRAMMAR}")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise UsageError(
            f"{uri}: {bucket!r} is not a valid bucket name",
            hint="bucket names use lowercase letters, digits, '-', '_' and '.' (3-63 characters)",
        )
    if path.startswith("/"):
        raise UsageError(f"{uri} has an empty path segment after the bucket", hint=f"expected {GRAMMAR}")
    return GcsUri(bucket, path)
