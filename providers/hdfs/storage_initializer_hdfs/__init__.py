"""``hdfs://`` and ``webhdfs://``: HDFS through its WebHDFS REST API, configured the way KServe does it.

URI grammar (KServe's): everything after the scheme is an HDFS *path*; the namenode comes from the
configuration. ``hdfs:///models/iris`` and ``hdfs://models/iris`` both name ``/models/iris``; with
``HDFS_ROOTPATH`` set, ``hdfs://iris`` is ``iris`` below that root (a relative root is below the
user's home directory) while ``hdfs:///abs`` stays absolute. Beyond KServe: when no namenode is
configured, the URI's authority is the namenode's WebHDFS address, ``webhdfs://HOST[:PORT]/path``
(plain HTTP, port 9870 by default; the same for ``hdfs://``, whose port must then be the HTTP one).

Configuration, one value per file in ``$HDFS_SECRET_DIR`` (default ``/var/secrets/kserve-hdfscreds``)
or, replacing that directory as in KServe, a storage-spec JSON (``STORAGE_CONFIG`` /
``STORAGE_OVERRIDE_CONFIG``) of ``type`` ``hdfs`` or ``webhdfs`` whose file secrets are base64:
``HDFS_NAMENODE`` (``http(s)://host:port``, several separated by ``;`` for an HA pair),
``HDFS_ROOTPATH``, ``USER_PROXY`` (sent as ``doas``), ``TLS_CERT`` + ``TLS_KEY`` (client
certificate), ``TLS_CA``, ``TLS_SKIP_VERIFY``, ``HEADERS`` (a JSON object of extra request headers),
``N_THREADS`` (the most byte ranges read from the cluster at once), ``KERBEROS_PRINCIPAL`` +
``KERBEROS_KEYTAB`` (the ``kerberos`` extra).

Transfer: the whole tree below a directory (KServe downloads only its top-level entries), each file
read by the engine as parallel ``OPEN`` ranges (``offset``/``length``, redirected to a datanode).
Every range is checked against the file's ``fileId``/``modificationTime``/``length`` afterwards, so
a file replaced mid-download is reported, never spliced. An empty directory or a missing path is an
error (KServe reports success on an empty directory). The configuration is logged without secrets.
"""

from .config import CONFIG_KEYS, DEFAULT_HTTP_PORT, DEFAULT_SECRET_DIR, FILE_KEYS, HdfsConfig, load_config, parse_config
from .provider import HdfsProvider

__all__ = [
    "CONFIG_KEYS",
    "DEFAULT_HTTP_PORT",
    "DEFAULT_SECRET_DIR",
    "FILE_KEYS",
    "HdfsConfig",
    "HdfsProvider",
    "load_config",
    "parse_config",
]
