"""storage-initializer: a pluggable, parallel, resumable model downloader for KServe.

The public API for plugin authors is :mod:`storage_initializer.provider`,
:mod:`storage_initializer.errors` and :func:`storage_initializer.redact.register_secret`;
:func:`download` runs downloads from Python. Submodules are imported lazily so
``storage-initializer --help`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from storage_initializer.redact import install as _install_log_redaction

__version__ = "0.1.0"
_install_log_redaction()  # every record of the package's loggers is redacted when made

if TYPE_CHECKING:
    from storage_initializer.provider import Provider, ProviderContext, RemoteObject, Resolution, UriFormat
    from storage_initializer.runner import download

__all__ = ["Provider", "ProviderContext", "RemoteObject", "Resolution", "UriFormat", "__version__", "download"]


def __getattr__(name: str) -> Any:
    if name in ("Provider", "ProviderContext", "RemoteObject", "Resolution", "UriFormat"):
        from storage_initializer import provider

        return getattr(provider, name)
    if name == "download":
        from storage_initializer.runner import download

        return download
    raise AttributeError(name)
