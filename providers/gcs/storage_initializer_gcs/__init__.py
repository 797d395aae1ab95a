"""``gs://``: Google Cloud Storage (and emulators) on ``google-cloud-storage`` and ``google-auth``.

Grammar (see README.md)::

    gs://BUCKET                the whole bucket
    gs://BUCKET/PATH           the object PATH if it exists, else everything under PATH/
    gs://BUCKET/PATH/          everything under PATH/ (a directory only)

* Listing: ``Bucket.get_blob(PATH)``; when there is no such object,
  ``Client.list_blobs(prefix=PATH/, page_size=1000)``, whose pages are fetched
  one at a time as the engine consumes them, so memory stays flat. A prefix is
  a directory: ``gs://b/model`` never pulls ``model-v2/`` or ``model.bin``.
  The library's own retries are off (``retry=None``): the engine retries.
* Reads: the JSON API's media download (``alt=media``) through the client's
  authorized session (google-auth adds and refreshes the token), with a
  ``Range`` header, pinned with ``generation=`` to the generation the listing
  saw (GCS answers 404 once that generation is replaced in an unversioned
  bucket) and checked against ``X-Goog-Generation``. The body is read with
  ``readinto`` straight from the socket into the engine's buffers: the
  library's ``download_*`` methods buffer whole ranges in memory or write to a
  file themselves, which the engine already does (atomic, resumable, verified).
* Objects stored with ``Content-Encoding: gzip`` are written decompressed, as
  KServe (``download_to_filename``) writes them: one stream, no ranges; their
  integrity rests on gzip's own CRC, since the listed size and checksums are
  those of the compressed bytes.
* Credentials, in google-auth's ``default()`` order but read from the
  provider's environment (``self.env``) and with a bounded metadata probe:
  ``STORAGE_EMULATOR_HOST`` -> anonymous, as google-cloud-storage does;
  ``GOOGLE_APPLICATION_CREDENTIALS`` and then gcloud's application-default file,
  each loaded by google-auth (service account, external account, impersonation,
  authorized user); the GCE/GKE metadata server (google-auth's
  ``compute_engine.Credentials``); else anonymous, which reads public buckets.
  ``google.auth.default()`` itself is not called: it reads only ``os.environ``
  (the engine may hand a provider another environment), fixes the probe's
  timeout at import time as a whole number of seconds and does not bound it by
  the connect timeout.
"""

from .credentials import Credentials, find_credentials
from .provider import GcsProvider
from .settings import DEFAULT_ENDPOINT, GcsSettings, settings_from_env
from .uri import PREFIX, GcsUri, parse_uri

__all__ = [
    "DEFAULT_ENDPOINT",
    "PREFIX",
    "Credentials",
    "GcsProvider",
    "GcsSettings",
    "GcsUri",
    "find_credentials",
    "parse_uri",
    "settings_from_env",
]
