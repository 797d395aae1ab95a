# storage-initializer: a drop-in image for KServe's storage-initializer init container.
#
#   docker build -t storage-initializer .                                   # every provider
#   docker build --build-arg PROVIDERS=s3 -t storage-initializer:s3 .       # one URI family
#   docker run --rm -v "$PWD/out:/mnt/models" storage-initializer s3://bucket/model /mnt/models
#
# PROVIDERS: "all" (default: every providers/*/ distribution), "none" (the core and
# its local-path provider only), or names separated by spaces or commas
# ("s3", "azure http", "model-registry,s3"): one distribution per name from providers/.
# EXTRA_PACKAGES: more pip requirements installed alongside, e.g. third-party plugins
# ("storage-initializer-ftp==0.1.0", or a path in the build context: "./examples/ftp").
# CORE_EXTRAS: extras of the core: "auto" (default: "signing", OpenSSF model-signature
# verification, in the image with every provider; none in the others), "none", or a list
# ("signing").
# The build stage needs the package index (PyPI or PIP_INDEX_URL); the runtime stage
# needs none and holds no compiler, no pip and no build tool.

ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS build
ARG DEBIAN_FRONTEND=noninteractive
# Debian's python3 is the interpreter of the runtime stage too (same base, same archive).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY storage_initializer/ storage_initializer/
COPY providers/ providers/
COPY examples/ examples/
ARG PROVIDERS=all
ARG EXTRA_PACKAGES=""
ARG CORE_EXTRAS=auto
SHELL ["/bin/bash", "-euo", "pipefail", "-c"]
# Wheels for the core, the chosen providers and all their dependencies, then a
# virtualenv without pip holding exactly those (installed by the build venv's pip).
RUN dirs=(); \
    case "$PROVIDERS" in \
      all) for f in providers/*/pyproject.toml; do dirs+=("./${f%/pyproject.toml}"); done ;; \
      none) ;; \
      *) for name in ${PROVIDERS//,/ }; do \
           d="providers/${name//-/_}"; \
           if [[ ! -f "$d/pyproject.toml" ]]; then \
             echo "PROVIDERS: no provider named '$name' in providers/: $(ls providers)" >&2; exit 1; \
           fi; \
           dirs+=("./$d"); \
         done ;; \
    esac; \
    read -ra extra <<< "$EXTRA_PACKAGES"; \
    extras="$CORE_EXTRAS"; \
    if [[ "$extras" == auto ]]; then extras=$([[ "$PROVIDERS" == all ]] && echo signing || echo none); fi; \
    core="."; if [[ "$extras" != none && -n "$extras" ]]; then core=".[${extras// /,}]"; fi; \
    echo "core: $core; providers: ${dirs[*]:-(none)}; extra packages: ${extra[*]:-(none)}"; \
    python3 -m venv /opt/build; \
    /opt/build/bin/pip wheel --use-pep517 --wheel-dir /wheels "$core" "${dirs[@]}" "${extra[@]}"; \
    python3 -m venv --without-pip /opt/venv; \
    /opt/build/bin/pip --python /opt/venv/bin/python install --no-index --find-links /wheels /wheels/*.whl

FROM ${BASE_IMAGE}
ARG DEBIAN_FRONTEND=noninteractive
ARG PROVIDERS=all
ARG EXTRA_PACKAGES=""
LABEL org.opencontainers.image.title="storage-initializer" \
      org.opencontainers.image.description="Pluggable, parallel, resumable model downloader for KServe's storage-initializer init container" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.kserve.storage-initializer.providers="${PROVIDERS}" \
      io.kserve.storage-initializer.extra-packages="${EXTRA_PACKAGES}"
# uid 1000 owns /mnt/models; group 0 may write it too, for the arbitrary uid (in
# group 0) that OpenShift assigns. No home directory: nothing may need one.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 1000 storage-initializer \
    && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin storage-initializer \
    && mkdir -p /mnt/models \
    && chown 1000:0 /mnt/models \
    && chmod 0775 /mnt/models
COPY --from=build /opt/venv /opt/venv
COPY entrypoint.sh /entrypoint.sh
# TMPDIR: with a read-only root filesystem (the manifests' securityContext) /tmp is not
# writable; /dev/shm is a tmpfs every container gets, read-only root or not. Only small
# files land there (HDFS file secrets from a storage spec); Python's tempfile falls back
# to /tmp when /dev/shm is unusable. Set TMPDIR=/tmp if you mount a volume there.
ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/dev/shm
# Fail the build, not the first pod, when a provider cannot load. Then index the providers'
# URI formats, so a pod imports only the provider its URI needs (registry.py: write_index).
RUN out="$(storage-initializer --list-providers)" \
    && echo "$out" \
    && case "$out" in *BROKEN*|*MISSING*) exit 1 ;; esac \
    && python3 -m storage_initializer.registry --write-index \
    && python3 -c "import importlib.util as u; u.find_spec('model_signing') and __import__('model_signing.verifying')"
USER 1000
ENTRYPOINT ["/entrypoint.sh"]
CMD ["--help"]
