"""Keep secrets out of every line this tool prints.

Redaction is a property of the boundaries, so providers need not call
:func:`redact` themselves: every :class:`~storage_initializer.errors.StorageInitializerError`
redacts its message and hint, every log record of the ``storage_initializer``
loggers (the core's, ``storage_initializer.<provider>``, and a plugin's
``storage_initializer_<name>``) is redacted when it is made (:func:`install`,
done on import), and the command redacts each line it writes, the
termination log and the record file once more. Providers register the
secrets they read or build with :func:`register_secret`.

Two mechanisms, both applied to every log line, error message and the
termination log:

* known secret *values* (collected from the environment at start-up and
  registered by providers with :func:`register_secret`) are replaced wherever
  they appear, whatever the surrounding text;
* secret-shaped *parts of URLs* (userinfo, SAS signatures, presigned-URL
  credentials, ``token=`` parameters) and ``Authorization`` headers are masked
  by pattern, so a secret nobody registered is still hidden.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping

MASK = "***"

_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None

# Environment variables whose values are secrets (matched case-insensitively
# on the name). `<host>-headers` values carry tokens; a model registry or HF
# token file path is not secret, its content is registered by the provider.
_SECRET_NAME = re.compile(
    r"(SECRET|PASSWORD|PASSWD|TOKEN|ACCESS_KEY|ACCOUNT_KEY|CONNECTION_STRING|"
    r"SAS|CREDENTIAL|PRIVATE_KEY|API_KEY|AUTH)|-headers$",
    re.IGNORECASE,
)
_NOT_SECRET_NAME = re.compile(
    r"(_FILE|_PATH|_DIR|ACCESS_KEY_ID|_TOKEN_FILE|CREDENTIALS_FILE|APPLICATION_CREDENTIALS|TOKEN_URL|_URL|ENDPOINT)$",
    re.IGNORECASE,
)

# Query parameters that carry credentials (Azure SAS, S3/GCS presigned URLs,
# generic tokens). Matched case-insensitively.
_SECRET_QUERY = (
    r"sig|signature|x-amz-signature|x-amz-credential|x-amz-security-token|"
    r"x-goog-signature|x-goog-credential|googleaccessid|token|access_token|"
    r"api_key|apikey|key|password|secret|code|delegation"
)
_QUERY_RE = re.compile(rf"(?i)([?&;](?:{_SECRET_QUERY})=)[^&#\s'\"]*")
# Not the "[USER@]" of a grammar a hint shows.
_USERINFO_RE = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)(?!\[user\b)[^/?#\s'\"]+@")
_AUTH_HEADER_RE = re.compile(r"(?i)\b(authorization|x-api-key|cookie)(['\"]?\s*[:=]\s*['\"]?)[^'\"\n,}]+")
_ACCOUNT_KEY_RE = re.compile(r"(?i)(AccountKey=|SharedAccessSignature=)[^;\s'\"]+")


def register_secret(value: str | None) -> None:
    """Mask ``value`` wherever it appears in output from now on.

    Call it for any credential a provider reads from a file or builds (a
    token, a key). Short values (under 6 characters) are ignored: masking
    them would mangle ordinary words.
    """
    if not value or len(value) < 6:
        return
    global _pattern
    with _lock:
        pieces = {value, value.strip()}
        # Secrets also show up percent-encoded inside URLs.
        from urllib.parse import quote

        pieces.add(quote(value, safe=""))
        new = {p for p in pieces if len(p) >= 6} - _secrets
        if not new:
            return
        _secrets.update(new)
        ordered = sorted(_secrets, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(s) for s in ordered))


def register_env_secrets(env: Mapping[str, str]) -> None:
    """Register the values of secret-looking environment variables."""
    for name, value in env.items():
        if _SECRET_NAME.search(name) and not _NOT_SECRET_NAME.search(name):
            register_secret(value)
            # JSON header maps: mask each value too (an Authorization value
            # may be logged alone).
            if name.endswith("-headers"):
                _register_json_values(value)
        elif name in ("STORAGE_CONFIG", "STORAGE_OVERRIDE_CONFIG"):
            _register_json_values(value)


def _register_json_values(text: str) -> None:
    import json

    try:
        data = json.loads(text)
    except ValueError:
        return
    if isinstance(data, dict):
        for key, value in data.items():
            secret_key = _SECRET_NAME.search(str(key)) or str(key).lower() in ("authorization", "cookie")
            if isinstance(value, str) and secret_key:
                register_secret(value)


def redact(text: str) -> str:
    """Return ``text`` with every known or secret-shaped credential masked."""
    if not text:
        return text
    pattern = _pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    text = _USERINFO_RE.sub(rf"\1{MASK}@", text)
    text = _QUERY_RE.sub(rf"\1{MASK}", text)
    text = _ACCOUNT_KEY_RE.sub(rf"\1{MASK}", text)
    text = _AUTH_HEADER_RE.sub(rf"\1\2{MASK}", text)
    return text


def clear_registered_secrets() -> None:
    """Forget registered values (for tests that run several commands in-process)."""
    global _pattern
    with _lock:
        _secrets.clear()
        _pattern = None


# -- the logging boundary ----------------------------------------------------------------------
#: Loggers whose records are redacted when made: ``storage_initializer`` and every name that
#: starts with it (``storage_initializer.s3``, a plugin's ``storage_initializer_ftp``).
LOGGER_PREFIX = "storage_initializer"
_REDACTED = "_storage_initializer_redacted"


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    """Render ``record``'s message and traceback text, masked, in place (once)."""
    if getattr(record, _REDACTED, False):
        return record
    try:
        message = record.getMessage()
    except Exception:  # a broken format string: logging reports it when the record is emitted
        return record
    record.msg, record.args = redact(message), None
    if record.exc_info and not record.exc_text:
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    setattr(record, _REDACTED, True)
    return record


class RedactFilter(logging.Filter):
    """A ``logging.Filter`` masking secrets in every record it sees (it drops none).

    Add it to any logger or handler, e.g. a third-party library's logger a
    provider drives (``logging.getLogger("hdfs.client").addFilter(RedactFilter())``).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


_FILTER = RedactFilter()


def install() -> None:
    """Redact every record of the package's loggers as it is made, whatever the handlers (idempotent).

    Through the log record factory, not a filter on the ``storage_initializer``
    logger: logging runs a logger's filters only for records logged on that very
    logger, not for those of its children (``storage_initializer.s3``), nor of
    loggers a plugin makes later. The factory sees each record of those names
    once, before any handler, so an application's own handlers (the Python API)
    get masked records too.
    """
    previous = logging.getLogRecordFactory()
    if getattr(previous, _REDACTED, False):
        return

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if record.name.startswith(LOGGER_PREFIX):
            _FILTER.filter(record)
        return record

    setattr(factory, _REDACTED, True)
    logging.setLogRecordFactory(factory)
