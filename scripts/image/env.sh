# Sourced by the image scripts: where state lives and which Docker engine to talk to.
#   SI_WORK      scratch dir for the engine's state, the base rootfs and the test venv
#                (default /tmp/storage-initializer-image-test)
#   DOCKER_HOST  an engine to use; default: /var/run/docker.sock when it answers, else a
#                private dockerd under $SI_WORK/docker (scripts/image/engine.sh start)
#   DOCKER       the docker CLI (default: Debian's /usr/bin/docker, which drives BuildKit)
export SI_WORK=${SI_WORK:-/tmp/storage-initializer-image-test}
mkdir -p "$SI_WORK"
# Debian's CLI (20.10) drives BuildKit itself; a newer CLI elsewhere on PATH (28 at
# /usr/local/bin on these machines) wants a buildx plugin it lacks. On a fresh machine
# /usr/bin/docker appears only after `engine.sh install`: call si_pick_docker again then.
if [ -z "${SI_DOCKER_GIVEN:-}" ]; then
  if [ -n "${DOCKER:-}" ]; then SI_DOCKER_GIVEN=1; else SI_DOCKER_GIVEN=0; fi
fi
si_pick_docker() {
  [ "$SI_DOCKER_GIVEN" = 1 ] && return 0
  if [ -x /usr/bin/docker ]; then DOCKER=/usr/bin/docker; else DOCKER=docker; fi
  export DOCKER
}
export SI_DOCKER_GIVEN
si_pick_docker
if [ -z "${DOCKER_HOST:-}" ]; then
  if [ -S /var/run/docker.sock ] && "$DOCKER" -H unix:///var/run/docker.sock info >/dev/null 2>&1; then
    DOCKER_HOST=unix:///var/run/docker.sock
  else
    DOCKER_HOST=unix://$SI_WORK/docker/docker.sock
  fi
fi
export DOCKER_HOST
export DOCKER_BUILDKIT=1
