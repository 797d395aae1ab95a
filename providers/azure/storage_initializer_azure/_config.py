"""URIs, environment and credential choice for Azure Blob and Azure Files.

Everything here is pure (no SDK import, no network), so each option is unit
testable: :func:`parse_uri` turns a URI into account/container/path/SAS,
:func:`azure_env` applies KServe's ``AZ_*`` aliases, and :func:`choose_access`
decides, from the environment alone, which endpoint to talk to and with which
credential.

Credential precedence (first match wins):

1. a SAS in the URI's query string;
2. ``AZURE_STORAGE_CONNECTION_STRING`` for the URI's account: its
   ``AccountKey`` or ``SharedAccessSignature`` (its endpoint is used whenever
   it names this account, even when the credential comes from below);
3. ``AZURE_CLIENT_ID`` set: the Azure AD credential ``DefaultAzureCredential``
   would pick in a pod (service principal secret or certificate, workload
   identity, managed identity), built from the provider's environment;
4. ``AZURE_STORAGE_ACCESS_KEY``: the account key;
5. anonymous (public containers; Azure Files has no anonymous access).

KServe checks 3 before 4 too for Blob; for Azure Files it only ever uses the
key, so there 4 comes before 3 (Azure AD is an addition, used without a key).
1 and 2 are additions (KServe passes a URI SAS through unchanged, and does not
read connection strings).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from storage_initializer.config import env_str
from storage_initializer.errors import ConfigError, UsageError
from storage_initializer.redact import register_secret

Service = Literal["blob", "file"]

#: Public Azure, Azure China, Azure US Government, Azure Germany (legacy).
CLOUD_SUFFIXES = ("core.windows.net", "core.chinacloudapi.cn", "core.usgovcloudapi.net", "core.cloudapi.de")
_SUFFIX_RE = r"core\.(?:windows\.net|chinacloudapi\.cn|usgovcloudapi\.net|cloudapi\.de)"

#: Azurite's published development account (``UseDevelopmentStorage=true``).
DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
_DEV_PORTS = {"blob": 10000, "file": 10004}

#: Every SAS query parameter (account, service and user delegation SAS, as the SDK's
#: ``QueryStringConstants`` name them): response-header overrides (``rsc*``), the
#: delegation key's fields (``skt``, ``ske``, ``sks``, ``skv``...), encryption scope...
_SAS_KEYS = frozenset(
    {"sv", "ss", "srt", "sp", "se", "st", "spr", "sip", "sr", "sig", "si", "sdd", "ses", "srh", "srq"}
    | {"rscc", "rscd", "rsce", "rscl", "rsct"}
    | {"skoid", "sktid", "skt", "ske", "sks", "skv", "skdutid", "sduoid", "saoid", "suoid", "scid"}
)


def host_pattern(service: Service) -> str:
    """Regex of the service's host names: ``ACCOUNT.SERVICE.core.<cloud>`` or the DNS-zone form."""
    return rf"[a-z0-9]{{3,24}}\.(?:{service}\.{_SUFFIX_RE}|z[0-9]{{1,2}}\.{service}\.storage\.azure\.net)"


def uri_regexes(service: Service) -> tuple[str, ...]:
    """The ``supportedUriFormats`` regexes (KServe's, plus sovereign clouds)."""
    return (
        rf"^https://[a-z0-9]{{3,24}}\.{service}\.{_SUFFIX_RE}(:[0-9]+)?/",
        rf"^https://[a-z0-9]{{3,24}}\.z[0-9]{{1,2}}\.{service}\.storage\.azure\.net(:[0-9]+)?/",
    )


@dataclass(frozen=True)
class AzureUri:
    """``https://ACCOUNT.<service host>/CONTAINER[/PATH][?SAS]``, decoded.

    ``path`` is percent-decoded, without a leading '/'; a trailing '/' is
    kept (it says "a directory"). ``container`` is the blob container or the
    file share.
    """

    service: Service
    account: str
    host: str
    container: str
    path: str
    sas: str | None = field(default=None, repr=False)

    @property
    def account_url(self) -> str:
        return f"https://{self.host}"

    @property
    def shown(self) -> str:
        return f"{self.account_url}/{self.container}/{self.path}".rstrip("/")


def parse_uri(uri: str, service: Service) -> AzureUri:
    """Parse and check an Azure Blob or Azure Files URI (no network)."""
    expected = (
        f"https://ACCOUNT.{service}.core.windows.net/{'CONTAINER' if service == 'blob' else 'SHARE'}[/PATH][?SAS]"
    )
    parts = urlsplit(uri)
    host = (parts.netloc or "").lower()
    if parts.scheme != "https" or not re.fullmatch(host_pattern(service) + r"(:[0-9]+)?", host):
        raise UsageError(f"{uri} is not an Azure {service} URI", hint=f"expected {expected}")
    segments = parts.path.lstrip("/").split("/", 1)
    container = unquote(segments[0])
    if not container:
        raise UsageError(f"{uri} names no container", hint=f"expected {expected}")
    if not re.fullmatch(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}|\$root|\$web", container):
        what = "container" if service == "blob" else "share"
        raise UsageError(
            f"{uri}: {container!r} is not a valid {what} name",
            hint="3-63 characters: lowercase letters, digits and single hyphens",
        )
    path = unquote(segments[1]) if len(segments) > 1 else ""
    if path.startswith("/") or "//" in path:
        raise UsageError(f"{uri} has an empty path segment", hint=f"expected {expected}")
    sas = None
    if parts.query:
        keys = {k for k, _ in parse_qsl(parts.query, keep_blank_values=True)}
        if "sig" not in keys or not keys <= _SAS_KEYS:
            raise UsageError(
                f"{uri}: only a SAS token may follow '?'", hint="append the SAS exactly as Azure issued it"
            )
        sas = parts.query
        register_secret(sas)
        register_secret(dict(parse_qsl(sas)).get("sig"))
    return AzureUri(service, host.split(".", 1)[0], host, container, path, sas)


def azure_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with KServe's aliases applied: a non-empty ``AZ_X`` sets ``AZURE_X``.

    KServe copies ``AZ_TENANT_ID``, ``AZ_CLIENT_ID`` and ``AZ_CLIENT_SECRET``
    over the ``AZURE_*`` names when they are set; every ``AZ_*`` name gets
    the same treatment here (e.g. ``AZ_STORAGE_ACCESS_KEY``).
    """
    merged = {k: v for k, v in env.items() if k.startswith("AZURE_")}
    for name, value in env.items():
        if name.startswith("AZ_") and value:
            merged["AZURE_" + name[3:]] = value
    return merged


@dataclass(frozen=True)
class ConnectionString:
    """The parts of ``AZURE_STORAGE_CONNECTION_STRING`` this tool uses."""

    account: str | None
    key: str | None = field(default=None, repr=False)
    sas: str | None = field(default=None, repr=False)
    endpoints: Mapping[str, str] = field(default_factory=dict)
    protocol: str | None = None
    suffix: str | None = None

    def endpoint(self, service: Service) -> str | None:
        """The service endpoint it sets, if any.

        An explicit ``BlobEndpoint``/``FileEndpoint``, else one derived from
        ``EndpointSuffix`` / ``DefaultEndpointsProtocol`` when either is given.
        Otherwise None: the URI's own host (e.g. a DNS-zone host) is kept.
        """
        explicit = self.endpoints.get(service)
        if explicit:
            return explicit.rstrip("/")
        if self.account and (self.suffix or self.protocol):
            return f"{self.protocol or 'https'}://{self.account}.{service}.{self.suffix or 'core.windows.net'}"
        return None

    def account_for(self, service: Service) -> str | None:
        """The account the connection string speaks for (named, or read off the endpoint)."""
        if self.account:
            return self.account.lower()
        endpoint = self.endpoints.get(service)
        if not endpoint:
            return None
        parts = urlsplit(endpoint)
        first_segment = parts.path.strip("/").split("/", 1)[0]
        return (first_segment or (parts.hostname or "").split(".", 1)[0]).lower() or None


def parse_connection_string(text: str) -> ConnectionString:
    """Parse ``Key=Value;...`` as Azure does (keys case-insensitive, values may hold '=')."""
    register_secret(text)
    settings: dict[str, str] = {}
    for item in text.strip().strip(";").split(";"):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(
                "AZURE_STORAGE_CONNECTION_STRING is malformed (expected Key=Value pairs separated by ';')"
            )
        settings[name.strip().lower()] = value.strip()
    if settings.get("usedevelopmentstorage", "").lower() == "true":
        proxy = settings.get("developmentstorageproxyuri", "http://127.0.0.1").rstrip("/")
        endpoints = {s: f"{proxy}:{port}/{DEV_ACCOUNT}" for s, port in _DEV_PORTS.items()}
        return ConnectionString(DEV_ACCOUNT, DEV_KEY, None, endpoints, "http")
    key = settings.get("accountkey") or None
    sas = settings.get("sharedaccesssignature", "").lstrip("?") or None
    register_secret(key)
    register_secret(sas)
    endpoints = {s: settings[f"{s}endpoint"] for s in ("blob", "file") if settings.get(f"{s}endpoint")}
    return ConnectionString(
        account=settings.get("accountname") or None,
        key=key,
        sas=sas,
        endpoints=endpoints,
        protocol=settings.get("defaultendpointsprotocol") or None,
        suffix=settings.get("endpointsuffix") or None,
    )


@dataclass(frozen=True)
class TokenChoice:
    """An Azure AD credential, chosen as ``DefaultAzureCredential`` would in a pod.

    ``DefaultAzureCredential`` tries, in order, the environment (service
    principal secret, then certificate), workload identity (federated token
    file) and managed identity. Those three depend only on environment
    variables, so the first that applies is known up front; building it from
    the provider's environment (rather than ``os.environ``) lets the ``AZ_*``
    aliases work without writing to the process environment.
    """

    kind: Literal["client_secret", "certificate", "workload_identity", "managed_identity"]
    client_id: str
    tenant_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    certificate_path: str | None = None
    certificate_password: str | None = field(default=None, repr=False)
    token_file: str | None = None
    authority: str | None = None

    def build(self) -> object:
        """The ``azure.identity`` credential object (imports azure-identity)."""
        try:
            import azure.identity as identity
        except ImportError:
            raise ConfigError(
                "AZURE_CLIENT_ID is set but azure-identity is not installed",
                hint="pip install azure-identity",
            ) from None
        authority = {"authority": self.authority} if self.authority else {}
        if self.kind == "client_secret":
            assert self.tenant_id and self.client_secret
            return identity.ClientSecretCredential(self.tenant_id, self.client_id, self.client_secret, **authority)
        if self.kind == "certificate":
            assert self.tenant_id and self.certificate_path
            password = {"password": self.certificate_password} if self.certificate_password else {}
            return identity.CertificateCredential(
                self.tenant_id, self.client_id, self.certificate_path, **password, **authority
            )
        if self.kind == "workload_identity":
            assert self.tenant_id and self.token_file
            return identity.WorkloadIdentityCredential(
                tenant_id=self.tenant_id, client_id=self.client_id, token_file_path=self.token_file, **authority
            )
        return identity.ManagedIdentityCredential(client_id=self.client_id)

    @property
    def description(self) -> str:
        names = {
            "client_secret": "service principal secret (AZURE_CLIENT_SECRET)",
            "certificate": "service principal certificate (AZURE_CLIENT_CERTIFICATE_PATH)",
            "workload_identity": "workload identity (AZURE_FEDERATED_TOKEN_FILE)",
            "managed_identity": "managed identity",
        }
        return f"Azure AD {names[self.kind]} for client {self.client_id}"


def choose_token(env: Mapping[str, str]) -> TokenChoice | None:
    """The Azure AD credential for ``env`` (already aliased), or None without ``AZURE_CLIENT_ID``."""
    client_id = env.get("AZURE_CLIENT_ID", "")
    if not client_id:
        return None
    tenant = env.get("AZURE_TENANT_ID") or None
    authority = env.get("AZURE_AUTHORITY_HOST") or None
    secret = env.get("AZURE_CLIENT_SECRET") or None
    register_secret(secret)
    if tenant and secret:
        return TokenChoice("client_secret", client_id, tenant, client_secret=secret, authority=authority)
    cert = env.get("AZURE_CLIENT_CERTIFICATE_PATH") or None
    if tenant and cert:
        password = env.get("AZURE_CLIENT_CERTIFICATE_PASSWORD") or None
        register_secret(password)
        return TokenChoice(
            "certificate", client_id, tenant, certificate_path=cert, certificate_password=password, authority=authority
        )
    token_file = env.get("AZURE_FEDERATED_TOKEN_FILE") or None
    if tenant and token_file:
        return TokenChoice("workload_identity", client_id, tenant, token_file=token_file, authority=authority)
    return TokenChoice("managed_identity", client_id)


@dataclass(frozen=True)
class Access:
    """Where to send requests for one URI and how to authenticate them.

    Exactly one of ``key``, ``sas``, ``token`` is set, or none (anonymous).
    ``source`` names where the credential came from, for logs and hints.
    """

    endpoint: str
    account: str
    source: str
    key: str | None = field(default=None, repr=False)
    sas: str | None = field(default=None, repr=False)
    token: TokenChoice | None = None

    @property
    def anonymous(self) -> bool:
        return self.key is None and self.sas is None and self.token is None

    @property
    def hint(self) -> str:
        """What to check when the service refuses these credentials."""
        if self.anonymous:
            return (
                "no credentials were given: set AZURE_STORAGE_ACCESS_KEY, AZURE_STORAGE_CONNECTION_STRING, "
                "AZURE_CLIENT_ID (Azure AD) or append a SAS to the URI"
            )
        return f"check the {self.source} (it must be valid for storage account {self.account!r})"


def choose_access(target: AzureUri, env: Mapping[str, str]) -> Access:
    """Decide endpoint and credential for ``target`` from ``env`` (see the module docstring)."""
    env = azure_env(env)
    endpoint = target.account_url
    conn: ConnectionString | None = None
    raw = env_str(env, "AZURE_STORAGE_CONNECTION_STRING")
    if raw:
        parsed = parse_connection_string(raw)
        if parsed.account_for(target.service) == target.account:
            conn = parsed
            endpoint = parsed.endpoint(target.service) or endpoint
    account = target.account
    if target.sas:
        return Access(endpoint, account, "SAS in the URI", sas=target.sas)
    if conn is not None and conn.key:
        return Access(endpoint, account, "account key in AZURE_STORAGE_CONNECTION_STRING", key=_check_key(conn.key))
    if conn is not None and conn.sas:
        return Access(endpoint, account, "SAS in AZURE_STORAGE_CONNECTION_STRING", sas=conn.sas)
    key = env_str(env, "AZURE_STORAGE_ACCESS_KEY") or ""
    register_secret(key)
    # KServe: Blob tries Azure AD (AZURE_CLIENT_ID) before the key; Files only ever uses the key.
    token = choose_token(env) if target.service == "blob" or not key else None
    if token is not None:
        return Access(endpoint, account, token.description, token=token)
    if key:
        return Access(endpoint, account, "account key in AZURE_STORAGE_ACCESS_KEY", key=_check_key(key))
    return Access(endpoint, account, "anonymous access")


def other_account_note(target: AzureUri, env: Mapping[str, str]) -> str | None:
    """A warning when the connection string is for another account (it is then ignored)."""
    raw = azure_env(env).get("AZURE_STORAGE_CONNECTION_STRING", "").strip()
    if not raw:
        return None
    account = parse_connection_string(raw).account_for(target.service)
    if account and account != target.account:
        return (
            f"AZURE_STORAGE_CONNECTION_STRING is for storage account {account!r}, "
            f"not {target.account!r}: ignored for {target.shown}"
        )
    return None


def _check_key(key: str) -> str:
    try:
        base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(
            "the Azure storage account key is not valid base64",
            hint="copy key1 or key2 of the storage account exactly (it ends with '==')",
        ) from None
    return key
