"""The ``s3://`` provider for storage-initializer (design notes in ``_provider``)."""

from ._config import S3Settings, s3_settings
from ._listing import ObjectRef
from ._provider import S3Provider, parse_uri

__all__ = ["ObjectRef", "S3Provider", "S3Settings", "parse_uri", "s3_settings"]
