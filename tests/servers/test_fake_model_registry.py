"""Proof that the fake Model Registry answers as the OpenAPI spec and the real server do.

Every response is fetched over real HTTP and validated with openapi-core
against ``/work/shared/specs/model-registry.openapi.yaml``. The few answers the
real server gives that the spec does not list for an operation (``400`` for a
non-numeric id, chi's text ``404`` for an unknown route, ``405`` for a method
the fake does not serve) are checked against an explicit allow-list instead.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from openapi_core import OpenAPI
from openapi_core.contrib.requests import RequestsOpenAPIRequest, RequestsOpenAPIResponse

from tests.servers.fake_model_registry import API_PREFIX, SPEC_PATH, FakeModelRegistry

SPEC_SERVER = "http://localhost:8080"
ID_RE = re.compile(r"^[1-9][0-9]{0,8}$")
MILLIS_RE = re.compile(r"^(0|[1-9][0-9]*)$")
T0 = 1_750_000_000_000  # epoch millis used for explicit timestamps

#: (operation path template, status) pairs the real server produces but the
#: spec does not document; their bodies must still be the spec's Error object.
UNDOCUMENTED = {
    ("/registered_models/{id}", 400),
    ("/model_versions/{id}", 400),
    ("/registered_model", 400),
}


@pytest.fixture(scope="module")
def spec() -> OpenAPI:
    return OpenAPI.from_file_path(str(SPEC_PATH))


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        s.trust_env = False  # never route loopback requests through an ambient proxy
        yield s


@pytest.fixture
def seeded(fake_model_registry: FakeModelRegistry) -> FakeModelRegistry:
    reg = fake_model_registry
    reg.add_model(
        "iris",
        owner="alice",
        description="the iris classifier",
        versions=[
            {"name": "v1", "author": "alice", "artifacts": [{"uri": "s3://models/iris/1", "state": "LIVE"}]},
            {
                "name": "v2",
                "state": "ARCHIVED",
                "artifacts": [
                    {
                        "uri": "s3://models/iris/2",
                        "storageKey": "minio",
                        "storagePath": "iris/2",
                        "modelFormatName": "sklearn",
                        "modelFormatVersion": "1",
                    },
                    {"artifactType": "doc-artifact", "uri": "https://docs.example/iris"},
                ],
            },
            {"name": "v3", "artifacts": [{"uri": "https://example.test/iris-3.tgz"}]},
        ],
    )
    reg.add_model("mnist", state="ARCHIVED", versions=[{"name": "1.0"}])
    reg.add_model("bert")
    return reg


def spec_request(fake: FakeModelRegistry, response: requests.Response) -> RequestsOpenAPIRequest:
    """The request as openapi-core sees it, addressed to the spec's server URL."""
    req = response.request.copy()
    assert req.url is not None
    req.url = req.url.replace(fake.url, SPEC_SERVER, 1)
    return RequestsOpenAPIRequest(req)


def check(spec: OpenAPI, fake: FakeModelRegistry, response: requests.Response) -> Any:
    """Validate one response against the spec (or the allow-list) and return its JSON."""
    assert response.status_code != 502, response.text
    content_type = response.headers["Content-Type"]
    if (_template(response.url), response.status_code) in UNDOCUMENTED:
        assert content_type == "application/json; charset=UTF-8"
        body = response.json()
        assert set(body) == {"code", "message"} and all(isinstance(v, str) for v in body.values())
        return body
    spec.validate_response(spec_request(fake, response), RequestsOpenAPIResponse(response))
    assert content_type == "application/json; charset=UTF-8"
    assert response.text.endswith("}\n")  # Go's json.Encoder
    body = response.json()
    _check_wire_types(body)
    return body


def _template(url: str) -> str:
    """The spec path template of a URL (``/registered_models/{id}``)."""
    parts = urlsplit(url).path[len(API_PREFIX) :].split("/")
    collections = {"registered_models", "model_versions", "artifacts", "model_artifacts"}
    return "/".join("{id}" if i and parts[i - 1] in collections else p for i, p in enumerate(parts))


def _check_wire_types(body: Any) -> None:
    """Ids and timestamps are strings of digits everywhere, as the real server sends them."""
    if isinstance(body, dict):
        for key, value in body.items():
            if key in ("id", "registeredModelId"):
                assert isinstance(value, str) and ID_RE.match(value), (key, value)
            elif key.endswith("SinceEpoch"):
                assert isinstance(value, str) and MILLIS_RE.match(value), (key, value)
            else:
                _check_wire_types(value)
    elif isinstance(body, list):
        for item in body:
            _check_wire_types(item)


def get(session: requests.Session, fake: FakeModelRegistry, path: str, **params: str) -> requests.Response:
    return session.get(fake.api_url + path, params=params, timeout=5)


# -- success responses --------------------------------------------------------


def test_every_read_endpoint_validates(spec: OpenAPI, seeded: FakeModelRegistry, session: requests.Session) -> None:
    fake = seeded
    model = check(spec, fake, get(session, fake, "/registered_model", name="iris"))
    assert model["name"] == "iris" and model["state"] == "LIVE" and model["owner"] == "alice"
    assert check(spec, fake, get(session, fake, f"/registered_models/{model['id']}")) == model
    assert check(spec, fake, get(session, fake, "/registered_model", name="mnist"))["state"] == "ARCHIVED"

    versions = check(spec, fake, get(session, fake, f"/registered_models/{model['id']}/versions", pageSize="10"))
    assert [v["name"] for v in versions["items"]] == ["v1", "v2", "v3"]
    assert {v["registeredModelId"] for v in versions["items"]} == {model["id"]}
    assert versions["size"] == 3 and versions["pageSize"] == 10 and versions["nextPageToken"] == ""

    v2 = check(spec, fake, get(session, fake, "/model_version", name="v2", parentResourceId=model["id"]))
    assert v2["state"] == "ARCHIVED" and v2["name"] == "v2"
    assert check(spec, fake, get(session, fake, f"/model_versions/{v2['id']}")) == v2
    named = check(spec, fake, get(session, fake, f"/registered_models/{model['id']}/versions", name="v2"))
    assert named["items"] == [v2]

    arts = check(spec, fake, get(session, fake, f"/model_versions/{v2['id']}/artifacts", pageSize="5"))
    model_art, doc_art = arts["items"]
    assert model_art["artifactType"] == "model-artifact" and doc_art["artifactType"] == "doc-artifact"
    assert (model_art["storageKey"], model_art["storagePath"], model_art["uri"]) == (
        "minio",
        "iris/2",
        "s3://models/iris/2",
    )
    assert check(spec, fake, get(session, fake, f"/artifacts/{doc_art['id']}")) == doc_art
    assert check(spec, fake, get(session, fake, f"/model_artifacts/{model_art['id']}")) == model_art
    found = check(spec, fake, get(session, fake, "/model_artifact", name=model_art["name"], parentResourceId=v2["id"]))
    assert found == model_art
    found = check(spec, fake, get(session, fake, "/artifact", name=doc_art["name"], parentResourceId=v2["id"]))
    assert found == doc_art

    for path in ("/registered_models", "/model_versions", "/artifacts", "/model_artifacts"):
        listed = check(spec, fake, get(session, fake, path, pageSize="100"))
        assert listed["size"] == len(listed["items"]) > 0
    only_docs = check(spec, fake, get(session, fake, "/artifacts", artifactType="doc-artifact"))
    assert [a["id"] for a in only_docs["items"]] == [doc_art["id"]]


def test_ids_are_shared_by_models_and_versions_not_by_artifacts(
    spec: OpenAPI, seeded: FakeModelRegistry, session: requests.Session
) -> None:
    """MLMD stores models and versions as contexts (one id sequence), artifacts apart."""
    fake = seeded
    contexts = check(spec, fake, get(session, fake, "/registered_models", pageSize="100"))["items"]
    contexts += check(spec, fake, get(session, fake, "/model_versions", pageSize="100"))["items"]
    assert sorted(int(c["id"]) for c in contexts) == list(range(1, len(contexts) + 1))
    artifacts = check(spec, fake, get(session, fake, "/artifacts", pageSize="100"))["items"]
    assert sorted(int(a["id"]) for a in artifacts) == list(range(1, len(artifacts) + 1))


@pytest.mark.parametrize("order_by", ["ID", "CREATE_TIME", "LAST_UPDATE_TIME", None])
@pytest.mark.parametrize("sort_order", ["ASC", "DESC", None])
def test_paging_visits_every_item_once_in_order(
    spec: OpenAPI,
    fake_model_registry: FakeModelRegistry,
    session: requests.Session,
    order_by: str | None,
    sort_order: str | None,
) -> None:
    fake = fake_model_registry
    # Creation order differs from id order, two versions share a timestamp and
    # updates reorder LAST_UPDATE_TIME.
    times = [5000, 1000, 3000, 3000, 9000, 7000, 2000]
    model = fake.add_model("m")
    versions = [fake.add_version("m", f"v{i}", create_time=T0 + t) for i, t in enumerate(times)]
    fake.update(versions[4]["id"], update_time=T0 + 500)
    fake.update(versions[1]["id"], author="bob")
    params = {k: v for k, v in {"orderBy": order_by, "sortOrder": sort_order}.items() if v}
    seen: list[dict[str, Any]] = []
    token = ""
    pages = 0
    while True:
        page = check(
            spec,
            fake,
            get(session, fake, f"/registered_models/{model['id']}/versions", **params, nextPageToken=token),
        )
        assert page["pageSize"] == 2 and page["size"] == len(page["items"]) <= 2
        seen += page["items"]
        pages += 1
        token = page["nextPageToken"]
        if not token:
            break
        last = page["items"][-1]
        key = {
            "ID": "id",
            "CREATE_TIME": "createTimeSinceEpoch",
            "LAST_UPDATE_TIME": "lastUpdateTimeSinceEpoch",
        }
        assert base64.b64decode(token).decode() == f"{last['id']}:{last[key[order_by or 'ID']]}"
    assert pages == 4
    field = {
        "ID": "id",
        "CREATE_TIME": "createTimeSinceEpoch",
        "LAST_UPDATE_TIME": "lastUpdateTimeSinceEpoch",
    }
    expected = sorted(seen, key=lambda v: (int(v[field[order_by or "ID"]]), int(v["id"])))
    if sort_order == "DESC":
        expected.reverse()
    assert seen == expected
    assert len({v["id"] for v in seen}) == len(times)


def test_page_size_defaults_and_zero_means_everything(
    spec: OpenAPI, fake_model_registry: FakeModelRegistry, session: requests.Session
) -> None:
    fake = fake_model_registry
    for i in range(5):
        fake.add_model(f"m{i}")
    first = check(spec, fake, get(session, fake, "/registered_models"))
    assert (first["size"], first["pageSize"]) == (2, 2) and first["nextPageToken"]
    everything = check(spec, fake, get(session, fake, "/registered_models", pageSize="0"))
    assert (everything["size"], everything["pageSize"], everything["nextPageToken"]) == (5, 0, "")
    fake.default_page_size = 0  # the real server's default: no limit
    assert check(spec, fake, get(session, fake, "/registered_models"))["size"] == 5
    # A token the server cannot decode is ignored (real server): the listing restarts.
    restarted = check(spec, fake, get(session, fake, "/registered_models", nextPageToken="%%%"))
    assert restarted["size"] == 5


def test_artifact_type_filter_and_order(
    spec: OpenAPI, fake_model_registry: FakeModelRegistry, session: requests.Session
) -> None:
    fake = fake_model_registry
    fake.add_model(
        "llm",
        versions=[
            {
                "name": "1",
                "artifacts": [
                    {"uri": "s3://b/old", "create_time": T0 + 1000},
                    {"uri": "s3://b/new", "create_time": T0 + 3000},
                    {"artifactType": "doc-artifact", "uri": "https://d/readme", "create_time": T0 + 5000},
                ],
            }
        ],
    )
    version = check(spec, fake, get(session, fake, "/model_version", name="1", parentResourceId="1"))
    path = f"/model_versions/{version['id']}/artifacts"
    newest_first = check(spec, fake, get(session, fake, path, orderBy="CREATE_TIME", sortOrder="DESC"))
    assert [a["artifactType"] for a in newest_first["items"]] == ["doc-artifact", "model-artifact"]
    models_only = check(
        spec,
        fake,
        get(session, fake, path, artifactType="model-artifact", orderBy="CREATE_TIME", sortOrder="DESC"),
    )
    assert [a["uri"] for a in models_only["items"]] == ["s3://b/new", "s3://b/old"]
    assert models_only["nextPageToken"] == ""


# -- error responses ----------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params", "status", "message"),
    [
        (
            "/registered_model",
            {"name": "nope"},
            404,
            "no registered models found for name=nope, externalId=: not found",
        ),
        (
            "/registered_model",
            {},
            400,
            "invalid parameters call, supply either name or externalId: bad request",
        ),
        (
            "/model_version",
            {"name": "v9", "parentResourceId": "1"},
            404,
            "no model versions found for versionName=v9, registeredModelId=1, externalId=: not found",
        ),
        (
            "/model_version",
            {"name": "v1"},
            400,
            "supply either (versionName and registeredModelId), or externalId",
        ),
        ("/registered_models/999", {}, 404, "no registered model found for id 999: not found"),
        ("/registered_models/abc", {}, 400, 'strconv.ParseInt: parsing "abc": invalid syntax: bad request'),
        ("/model_versions/999", {}, 404, "no model version found for id 999: not found"),
        ("/model_versions/abc", {}, 400, "invalid syntax: bad request"),
        ("/artifacts/999", {}, 404, "no artifact found for id 999: not found"),
        ("/model_artifacts/3", {}, 404, "artifact with id 3 is not a model artifact: not found"),
        (
            "/model_artifact",
            {"name": "x", "parentResourceId": "2"},
            404,
            "no model artifacts found for name=x",
        ),
        ("/artifact", {"name": "x"}, 400, "supply either (artifactName and parentResourceId), or externalId"),
        ("/artifacts", {"orderBy": "NAME"}, 400, "invalid value 'NAME' for OrderByField"),
        (
            "/artifacts",
            {"sortOrder": "down"},
            400,
            "invalid value 'down' for SortOrder: valid values are [ASC DESC]",
        ),
        ("/artifacts", {"artifactType": "model"}, 400, "invalid value 'model' for ArtifactTypeQueryParam"),
        (
            "/artifacts",
            {"pageSize": "ten"},
            400,
            'strconv.ParseInt: parsing "ten": invalid syntax: bad request',
        ),
        ("/artifacts", {"filterQuery": "name LIKE '%x%'"}, 400, "invalid filter query"),
    ],
)
def test_error_answers_validate(
    spec: OpenAPI,
    seeded: FakeModelRegistry,
    session: requests.Session,
    path: str,
    params: dict[str, str],
    status: int,
    message: str,
) -> None:
    response = get(session, seeded, path, **params)
    assert response.status_code == status
    body = check(spec, seeded, response)
    assert body["code"] == {400: "Bad Request", 404: "Not Found"}[status]
    assert message in body["message"]


def test_lists_under_unknown_parents_are_empty_not_404(
    spec: OpenAPI, seeded: FakeModelRegistry, session: requests.Session
) -> None:
    """The real server does not check the parent of a child listing."""
    for path in ("/registered_models/999/versions", "/model_versions/999/artifacts"):
        body = check(spec, seeded, get(session, seeded, path))
        assert body == {"items": [], "nextPageToken": "", "pageSize": 2, "size": 0}


def test_unknown_route_and_unserved_methods(seeded: FakeModelRegistry, session: requests.Session) -> None:
    for url in (
        seeded.url + "/",
        seeded.api_url + "/registered_modelz",
        seeded.api_url + "/registered_models/1/x",
    ):
        response = session.get(url, timeout=5)
        assert (response.status_code, response.text) == (404, "404 page not found\n")
        assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    response = session.post(seeded.api_url + "/registered_models", json={"name": "x"}, timeout=5)
    assert response.status_code == 405


def test_filter_query_subset(spec: OpenAPI, seeded: FakeModelRegistry, session: requests.Session) -> None:
    live = check(spec, seeded, get(session, seeded, "/registered_models/1/versions", filterQuery="state = 'LIVE'"))
    assert [v["name"] for v in live["items"]] == ["v1", "v3"]
    both = check(
        spec,
        seeded,
        get(session, seeded, "/model_versions", filterQuery="state='ARCHIVED' AND name = \"v2\"", pageSize="9"),
    )
    assert [v["name"] for v in both["items"]] == ["v2"]


# -- authentication, faults, TLS, proxy form ---------------------------------


def test_bearer_token_required(spec: OpenAPI, seeded: FakeModelRegistry, session: requests.Session) -> None:
    seeded.require_token = "s3cr3t"
    url = seeded.api_url + "/registered_model?name=iris"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cr3t"}):
        response = session.get(url, headers=headers, timeout=5)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert check(spec, seeded, response)["code"] == "Unauthorized"
    ok = session.get(url, headers={"Authorization": "Bearer s3cr3t"}, timeout=5)
    assert check(spec, seeded, ok)["name"] == "iris"
    assert seeded.requests[-1].authorization == "Bearer s3cr3t"

    seeded.auth_failure_style = "kube-rbac-proxy"
    response = session.get(url, timeout=5)
    assert (response.status_code, response.text) == (401, "Unauthorized\n")


def test_injected_faults_then_recovery(seeded: FakeModelRegistry, session: requests.Session) -> None:
    seeded.add_fault(503, path_contains="/registered_model", times=2)
    seeded.add_fault(502, path_contains="/versions", body="<html>bad gateway</html>", content_type="text/html")
    url = seeded.api_url + "/registered_model?name=iris"
    assert [session.get(url, timeout=5).status_code for _ in range(3)] == [503, 503, 200]
    response = session.get(seeded.api_url + "/registered_models/1/versions", timeout=5)
    assert (response.status_code, response.text) == (502, "<html>bad gateway</html>")
    assert session.get(seeded.api_url + "/registered_models/1/versions", timeout=5).status_code == 200
    assert [r.status for r in seeded.requests] == [503, 503, 200, 502, 200]


def test_tls_with_private_ca(fake_model_registry_tls: FakeModelRegistry, session: requests.Session) -> None:
    fake = fake_model_registry_tls
    fake.add_model("iris")
    assert fake.url.startswith("https://") and fake.ca_file
    with pytest.raises(requests.exceptions.SSLError):
        session.get(fake.api_url + "/registered_models", timeout=5)
    response = session.get(fake.api_url + "/registered_models", verify=fake.ca_file, timeout=5)
    assert response.json()["items"][0]["name"] == "iris"
    assert fake.env()["MODEL_REGISTRY_CA_BUNDLE"] == fake.ca_file


def test_absolute_form_targets_act_as_proxy(seeded: FakeModelRegistry, session: requests.Session) -> None:
    """Used as a client's HTTP proxy, the fake answers for its served hosts and 502s the rest."""
    seeded.served_hosts.add("model-registry-service.team-a.svc.cluster.local:8080")
    proxies = {"http": seeded.url}
    ok = session.get(
        "http://model-registry-service.team-a.svc.cluster.local:8080" + API_PREFIX + "/registered_model?name=iris",
        proxies=proxies,
        timeout=5,
    )
    assert ok.json()["name"] == "iris"
    assert seeded.requests[-1].host == "model-registry-service.team-a.svc.cluster.local:8080"
    miss = session.get("http://iris" + API_PREFIX + "/registered_models", proxies=proxies, timeout=5)
    assert miss.status_code == 502
    assert seeded.requests[-1].host == "iris"


def test_validator_has_teeth(spec: OpenAPI, seeded: FakeModelRegistry, session: requests.Session) -> None:
    """Corrupted payloads must fail validation, or the checks above prove nothing."""
    corruptions: list[tuple[str, Callable[[dict[str, Any]], dict[str, Any]]]] = [
        ("/registered_model?name=iris", lambda b: {**b, "id": int(b["id"])}),
        ("/registered_model?name=iris", lambda b: {**b, "state": "DELETED"}),
        ("/registered_models/1/versions", lambda b: {k: v for k, v in b.items() if k != "nextPageToken"}),
        ("/registered_models/1/versions", lambda b: {**b, "size": "2"}),
        ("/model_versions/3/artifacts", lambda b: {**b, "items": [{**b["items"][0], "state": "GONE"}]}),
        ("/registered_model?name=nope", lambda b: {"message": b["message"]}),
    ]
    for path, corrupt in corruptions:
        response = session.get(seeded.api_url + path, timeout=5)
        check(spec, seeded, response)  # the genuine answer passes
        response._content = json.dumps(corrupt(response.json())).encode()
        with pytest.raises(Exception):  # noqa: B017 - openapi-core raises several validation types
            spec.validate_response(spec_request(seeded, response), RequestsOpenAPIResponse(response))


# -- the upstream Go initializer's calls ---------------------------------------


def test_upstream_csi_call_sequence(spec: OpenAPI, seeded: FakeModelRegistry, session: requests.Session) -> None:
    """The requests kubeflow/model-registry ``cmd/csi`` makes, validated as requests too.

    Upstream: FindRegisteredModel(name); without a version,
    GetRegisteredModelVersions(id).SortOrder(DESC) and takes ``items[0]`` (the
    highest id, even when ARCHIVED, first page only); with a version,
    FindModelVersion(name, parentResourceId); then
    GetModelVersionArtifacts(id).OrderBy(CREATE_TIME).SortOrder(DESC) and
    requires ``items[0]`` to be a model artifact.
    """
    fake = seeded
    fake.require_token = "t"
    session.headers["Authorization"] = "Bearer t"

    def call(path: str, **params: str) -> Any:
        response = get(session, fake, path, **params)
        spec.validate_request(spec_request(fake, response))
        return check(spec, fake, response)

    model = call("/registered_model", name="iris")
    latest = call(f"/registered_models/{model['id']}/versions", sortOrder="DESC")["items"][0]
    assert latest["name"] == "v3"
    pinned = call("/model_version", name="v2", parentResourceId=model["id"])
    artifacts = call(f"/model_versions/{pinned['id']}/artifacts", orderBy="CREATE_TIME", sortOrder="DESC")
    # The doc artifact is newer: upstream's items[0].ModelArtifact is nil and it fails.
    assert artifacts["items"][0]["artifactType"] == "doc-artifact"
    fake.update(model["id"], state="LIVE")
    fake.update(latest["id"], state="ARCHIVED")
    archived_latest = call(f"/registered_models/{model['id']}/versions", sortOrder="DESC")["items"][0]
    assert archived_latest["name"] == "v3" and archived_latest["state"] == "ARCHIVED"
