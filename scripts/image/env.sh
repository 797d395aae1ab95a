# Sourced by the image scripts: where state lives and which Docker engine to talk to.
#   SI_WORK      scratch dir for the engine's state, the base rootfs and the test venv
#                (default /tmp/storage-initializer-image-test)
#   DOCKER_HOST  an engine to use; default: /var/run/docker.sock when it answers, else a
#                private dockerd under $SI_WORK/docker (scripts/image/engine.sh start)
#   DOCKER       the docker CLI (default: Debian's /usr/bin/docker, which drives BuildKit)
export SI_WORK=${SI_WORK:-/tmp/storage-initializer-image-test}
mkdir -p "$SI_WORK"
if [ -z "${DOCKER:-}" ]; then
  if [ -x /usr/bin/docker ]; then DOCKER=/usr/bin/docker; else DOCKER=docker; fi
fi
export DOCKER
if [ -z "${DOCKER_HOST:-}" ]; then
  if [ -S /var/run/docker.sock ] && "$DOCKER" -H unix:///var/run/docker.sock info >/dev/null 2>&1; then
    DOCKER_HOST=unix:///var/run/docker.sock
  else
    DOCKER_HOST=unix://$SI_WORK/docker/docker.sock
  fi
fi
export DOCKER_HOST
export DOCKER_BUILDKIT=1
