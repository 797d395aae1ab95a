"""Azure Blob Storage and Azure Files providers for storage-initializer.

Two entry points, one distribution: ``azure-blob`` and ``azure-file``. This
module imports no Azure SDK; the providers import it when first used.
"""

from __future__ import annotations

from .blob import AzureBlobProvider
from .files import AzureFileProvider

__all__ = ["AzureBlobProvider", "AzureFileProvider"]
