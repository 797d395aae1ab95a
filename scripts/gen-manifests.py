#!/usr/bin/env python3
"""Generate the KServe ClusterStorageContainer manifests in deploy/ from the providers.

    python scripts/gen-manifests.py           # rewrite the generated files in deploy/
    python scripts/gen-manifests.py --check   # exit 1 and show a diff when deploy/ is stale

``supportedUriFormats`` come from the installed providers' own declarations
(``Provider.uri_formats`` via the ``storage_initializer.providers`` entry points), so
the manifests cannot drift from the code: tests/deploy/test_manifests.py fails when
the committed files differ from what this script writes. The built-in providers are
the core's and those of every ``providers/*/pyproject.toml``; a third-party plugin
installed in the same environment is never written into them. All of them must be
installed (``pip install -e . -e providers/<name>`` for each).

Two alternative sets (apply one, never both: KServe picks an arbitrary one of two
ClusterStorageContainers that match the same URI):

* ``deploy/default/``: one ClusterStorageContainer named ``default`` (it replaces
  KServe's own) with the image holding every provider, for every built-in format.
* ``deploy/per-format/``: one per URI family, each with an image built with
  ``--build-arg PROVIDERS=...`` that holds only what that family needs.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
IMAGE_REPOSITORY = "storage-initializer"  # kustomize `images:` points it at a real registry
GROUP = "storage_initializer.providers"
ALL = ("all",)


@dataclass(frozen=True)
class Bundle:
    """One per-format ClusterStorageContainer.

    ``claims``: the providers/ directories whose formats it lists; ``image``: the
    directories in its image (the ``PROVIDERS`` build argument; default ``claims``,
    :data:`ALL` for the image with every provider).
    """

    name: str
    claims: tuple[str, ...]
    image: tuple[str, ...] | None = None
    env: tuple[Mapping[str, object], ...] = ()
    note: str = ""

    @property
    def image_dirs(self) -> tuple[str, ...]:
        return self.image or self.claims

    @property
    def tag_suffix(self) -> str:
        return "" if self.image_dirs == ALL else f"-{self.name}"

    @property
    def build_command(self) -> str:
        if self.image_dirs == ALL:
            return "docker build -t {tag} ."
        names = " ".join(d.replace("_", "-") for d in self.image_dirs)
        return f'docker build --build-arg PROVIDERS="{names}" -t {{tag}} .'


PER_FORMAT: tuple[Bundle, ...] = (
    Bundle("s3", ("s3",)),
    Bundle("gcs", ("gcs",)),
    Bundle(
        "azure-https",
        ("azure", "git", "http"),
        note="https:// (the http provider) also matches Azure and git URLs, so one container serves\n"
        "them all: Azure URLs go to the Azure providers, https://HOST/PATH.git[@REF] to git (more\n"
        "specific), every other http(s) URL to http.",
    ),
    Bundle("hdfs", ("hdfs",)),
    Bundle(
        "hf",
        ("hf",),
        env=(
            {
                "name": "HF_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": "hf-secret", "key": "HF_TOKEN", "optional": False}},
            },
        ),
        note="HF_TOKEN comes from the Secret hf-secret in the InferenceService's namespace:\n"
        "  kubectl create secret generic hf-secret --from-literal=HF_TOKEN=<token>",
    ),
    Bundle(
        "oci",
        ("oci",),
        note="Registry credentials: a docker config.json named by KSERVE_OCI_DOCKER_CONFIG (KServe mounts\n"
        "its pull secret at /mnt/oci-fetch-auth/config.json); KSERVE_OCI_INSECURE_REGISTRY=true for plain HTTP.",
    ),
    Bundle(
        "modelscope",
        ("modelscope",),
        env=(
            {
                "name": "MODELSCOPE_API_TOKEN",
                "valueFrom": {
                    "secretKeyRef": {"name": "modelscope-secret", "key": "MODELSCOPE_API_TOKEN", "optional": True}
                },
            },
        ),
        note="MODELSCOPE_API_TOKEN (private repositories) comes from the Secret modelscope-secret, if present:\n"
        "  kubectl create secret generic modelscope-secret --from-literal=MODELSCOPE_API_TOKEN=<token>\n"
        "A private Hub: add MODELSCOPE_ENDPOINT (https://HOST) to env.",
    ),
    Bundle(
        "model-registry",
        ("model_registry",),
        image=ALL,
        env=(
            {"name": "MODEL_REGISTRY_BASE_URL", "value": "model-registry-service.kubeflow.svc.cluster.local:8080"},
            {"name": "MODEL_REGISTRY_SCHEME", "value": "http"},
        ),
        note="A registered model may live in any store, so this one runs the image with every provider.\n"
        "MODEL_REGISTRY_BASE_URL: the registry's REST service (host:port) in your cluster.",
    ),
)

RESOURCES = {"requests": {"cpu": "100m", "memory": "100Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}
SECURITY_CONTEXT = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "privileged": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}
HEADER = "# Generated by scripts/gen-manifests.py from the providers' declared URI formats; do not edit.\n"


@dataclass
class Provider:
    name: str  # entry-point name
    distribution: str
    directory: str | None  # providers/<directory>, None for the core
    formats: list[dict[str, str]] = field(default_factory=list)


def project_version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def builtin_entry_points() -> dict[str, tuple[str, str | None]]:
    """Entry-point name -> (distribution, providers/ directory) of every built-in provider."""
    found: dict[str, tuple[str, str | None]] = {}
    for pyproject in [ROOT / "pyproject.toml", *sorted((ROOT / "providers").glob("*/pyproject.toml"))]:
        project = tomllib.loads(pyproject.read_text())["project"]
        directory = None if pyproject.parent == ROOT else pyproject.parent.name
        for name in project.get("entry-points", {}).get(GROUP, {}):
            found[name] = (project["name"], directory)
    return found


def installed_builtin_providers() -> list[Provider]:
    """The built-in providers, with the formats their installed classes declare (sorted by name)."""
    from storage_initializer.registry import Registry

    registry = Registry.from_entry_points()
    providers, problems = [], []
    for name, (dist, directory) in sorted(builtin_entry_points().items()):
        entry = registry.entries.get(name)
        if entry is None:
            where = f"providers/{directory}" if directory else "."
            problems.append(f"{name} ({dist}) is not installed: pip install -e {where}")
            continue
        cls = entry.load()
        if cls is None:
            problems.append(f"{name} ({dist}) cannot load: {entry.error}")
            continue
        installed = getattr(entry.entry_point, "dist", None)
        if installed is not None and installed.name.replace("_", "-") != dist:
            problems.append(f"{name} comes from {installed.name}, not {dist}")
            continue
        providers.append(Provider(name, dist, directory, [f.as_crd() for f in cls.uri_formats]))
    if problems:
        raise SystemExit("gen-manifests: " + "; ".join(problems))
    return providers


# -- rendering (by hand, to keep comments; every scalar JSON-quoted, which is valid YAML) --------


def q(value: object) -> str:
    return json.dumps(value)


def render_mapping(data: Mapping[str, object], indent: int) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    for key, value in data.items():
        if isinstance(value, Mapping):
            lines.append(f"{pad}{key}:")
            lines += render_mapping(value, indent + 2)
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [{', '.join(q(v) for v in value)}]")
        else:
            lines.append(f"{pad}{key}: {q(value)}")
    return lines


def render_csc(
    name: str,
    image: str,
    providers: Sequence[Provider],
    env: Sequence[Mapping[str, object]],
    comment: str,
    workload_type: str = "initContainer",
) -> str:
    lines = [HEADER.rstrip("\n")]
    lines += [f"# {line}" if line else "#" for line in comment.splitlines()]
    lines += [
        'apiVersion: "serving.kserve.io/v1alpha1"',
        "kind: ClusterStorageContainer",
        "metadata:",
        f"  name: {q(name)}",
        "  labels:",
        '    app.kubernetes.io/name: "storage-initializer"',
        "spec:",
        "  container:",
        '    name: "storage-initializer"',  # KServe finds the init container by this name
        f"    image: {q(image)}",
    ]
    if env:
        lines.append("    env:")
        for item in env:
            first, *rest = render_mapping(item, 8)
            lines.append("      - " + first.lstrip())
            lines += rest
    lines.append("    resources:")
    lines += render_mapping(RESOURCES, 6)
    lines.append("    securityContext:")
    lines += render_mapping(SECURITY_CONTEXT, 6)
    lines.append("  supportedUriFormats:")
    for provider in providers:
        lines.append(f"    # {provider.name} ({provider.distribution})")
        for fmt in provider.formats:
            ((kind, value),) = fmt.items()
            lines.append(f"    - {kind}: {q(value)}")
    lines += [
        "  # the image takes SRC_URI DEST_PATH pairs, several in one run",
        "  supportsMultiModelDownload: true",
        f"  workloadType: {q(workload_type)}",
    ]
    return "\n".join(lines) + "\n"


def render_kustomization(resources: Sequence[str], comment: str) -> str:
    lines = [HEADER.rstrip("\n"), *(f"# {line}" for line in comment.splitlines())]
    lines += ["apiVersion: kustomize.config.k8s.io/v1beta1", "kind: Kustomization", "resources:"]
    lines += [f"  - {r}" for r in resources]
    lines += [
        "# Point the image at your registry: kustomize edit set image storage-initializer=REGISTRY/storage-initializer",
        "images:",
        f"  - name: {IMAGE_REPOSITORY}",
        f"    newName: {IMAGE_REPOSITORY}",
    ]
    return "\n".join(lines) + "\n"


def render_all() -> dict[Path, str]:
    """Every generated file under deploy/, keyed by path."""
    providers = installed_builtin_providers()
    version = project_version()
    by_dir: dict[str | None, list[Provider]] = {}
    for provider in providers:
        by_dir.setdefault(provider.directory, []).append(provider)
    files: dict[Path, str] = {}

    image = f"{IMAGE_REPOSITORY}:{version}"
    files[DEPLOY / "default" / "clusterstoragecontainer.yaml"] = render_csc(
        "default",
        image,
        providers,
        (),
        "Every built-in URI format, served by the image with every provider:\n"
        f"  docker build -t {image} .\n"
        "Named `default` like KServe's own, which it replaces. Do not also apply deploy/per-format/.",
    )
    files[DEPLOY / "default" / "kustomization.yaml"] = render_kustomization(
        ["clusterstoragecontainer.yaml"], "kubectl apply -k deploy/default"
    )

    # KServe's LocalModelCache runs the container of the first ClusterStorageContainer with this
    # workload type that matches the URI as its per-node download job; it coexists with either set.
    files[DEPLOY / "local-model-cache" / "clusterstoragecontainer.yaml"] = render_csc(
        "local-model-download",
        image,
        providers,
        ({"name": "STORAGE_INITIALIZER_PUBLISH", "value": "atomic-dir"},),
        "The download job of KServe's LocalModelCache (args: [SOURCE_URI, /mnt/models] on the node's volume),\n"
        "for every built-in URI format. STORAGE_INITIALIZER_PUBLISH=atomic-dir: the model's folder holds the\n"
        "whole model or nothing, never a partial download. Apply with deploy/default/ or deploy/per-format/.\n"
        "Sample LocalModelNodeGroup and LocalModelCache: deploy/samples/localmodelcache.yaml.",
        workload_type="localModelDownloadJob",
    )
    files[DEPLOY / "local-model-cache" / "kustomization.yaml"] = render_kustomization(
        ["clusterstoragecontainer.yaml"], "kubectl apply -k deploy/local-model-cache"
    )

    directories = {d for d in by_dir if d is not None}
    claimed = [d for bundle in PER_FORMAT for d in bundle.claims]
    named = set(claimed) | {d for bundle in PER_FORMAT for d in bundle.image_dirs if bundle.image_dirs != ALL}
    if named - directories:
        raise SystemExit(f"gen-manifests: PER_FORMAT names {sorted(named - directories)}, not in providers/")
    if directories - set(claimed) or len(claimed) != len(set(claimed)):
        raise SystemExit("gen-manifests: every providers/ directory must be claimed by exactly one PER_FORMAT bundle")
    resources = []
    for bundle in PER_FORMAT:
        served = [p for d in bundle.claims for p in by_dir[d]]
        tag = f"{IMAGE_REPOSITORY}:{version}{bundle.tag_suffix}"
        comment = f"{', '.join(p.name for p in served)}: one of the per-format set (deploy/per-format/).\n"
        comment += "  " + bundle.build_command.format(tag=tag) + "\n"
        comment += (bundle.note + "\n" if bundle.note else "") + "Do not also apply deploy/default/."
        path = DEPLOY / "per-format" / f"{bundle.name}.yaml"
        files[path] = render_csc(bundle.name, tag, served, bundle.env, comment)
        resources.append(path.name)
    files[DEPLOY / "per-format" / "kustomization.yaml"] = render_kustomization(
        resources, "kubectl apply -k deploy/per-format"
    )
    return files


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a file differs")
    args = parser.parse_args(argv)
    stale = 0
    for path, text in render_all().items():
        current = path.read_text() if path.exists() else ""
        if current == text:
            continue
        stale += 1
        rel = path.relative_to(ROOT)
        if args.check:
            sys.stdout.writelines(
                difflib.unified_diff(current.splitlines(True), text.splitlines(True), f"a/{rel}", f"b/{rel}")
            )
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {rel}")
    if args.check and stale:
        print(f"{stale} generated file(s) in deploy/ are stale: run python scripts/gen-manifests.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
