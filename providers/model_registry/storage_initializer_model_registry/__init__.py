"""``model-registry://``: resolve a Kubeflow Model Registry entry to its model artifact's URI.

A resolver, not a downloader: it asks the registry (REST API v1alpha3) for the
registered model, the version and the version's model artifact, and hands the
artifact's URI (``s3://...``, ``gs://...``, ``hf://...``, ``https://...``)
back to the core, which downloads it with whichever installed provider serves
that URI, configured by that provider's usual environment.

Grammar (every form kubeflow/model-registry's Go initializer ``cmd/csi``
accepts)::

    model-registry://MODEL[/VERSION][?namespace=NS]
    model-registry://HOST[:PORT]/MODEL[/VERSION][?namespace=NS]

Three or more segments are always ``HOST/MODEL/VERSION`` (the version keeps any
further ``/``). Two segments ``A/B`` are ambiguous and resolved as upstream
does: ``A`` is a host when it equals ``MODEL_REGISTRY_BASE_URL`` or when a
``GET`` of its ``registered_models`` list answers as a registry (the probe
carries no token; ``401``/``403`` also count); otherwise the URI is
``MODEL/VERSION``. With ``?namespace=NS`` the registry is
``SERVICE.NS.DOMAIN:PORT`` and no probe is made. See README.md.

Beyond upstream: without a version the newest LIVE version is taken (ARCHIVED
ones are skipped); the newest *model* artifact is taken even when a doc
artifact is newer; every list follows ``nextPageToken``; bearer tokens, CA
bundles and TLS verification are configurable; an artifact's ``storageKey`` /
``storagePath`` are applied as KServe's storage spec would.
"""

from .resolver import ModelRegistryProvider
from .settings import RegistrySettings, settings_from_env
from .uri import PREFIX, RegistryUri, parse_uri

__all__ = ["PREFIX", "ModelRegistryProvider", "RegistrySettings", "RegistryUri", "parse_uri", "settings_from_env"]
