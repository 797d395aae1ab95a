#!/usr/bin/env bash
# A Docker engine for the image test: Debian's docker.io, run privately with all
# state under $SI_WORK/docker (nothing in /var/lib/docker, no system service).
#
#   engine.sh install   apt-get install docker.io + debootstrap (root; no service is started)
#   engine.sh start     start a private dockerd unless one already answers at $DOCKER_HOST
#   engine.sh stop      stop the dockerd that `start` started (by its pid file)
#
# Source scripts/image/env.sh first (or let this script do it).
set -euo pipefail
. "$(dirname "$0")/env.sh"

D=$SI_WORK/docker

install_engine() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  [ -x /usr/bin/docker ] || missing+=(docker.io)
  [ ${#missing[@]} -eq 0 ] && { echo "engine: docker.io and debootstrap already installed"; return; }
  [ "$(id -u)" = 0 ] || { echo "engine: installing ${missing[*]} needs root" >&2; exit 1; }
  # No init system here: keep the package scripts from starting services.
  local policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod 0755 "$policy"
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || { [ -n "$policy" ] && rm -f "$policy"; exit 1; }
  [ -n "$policy" ] && rm -f "$policy"
  /usr/bin/docker --version; dockerd --version; debootstrap --version
}

start_engine() {
  if "$DOCKER" info >/dev/null 2>&1; then echo "engine: using the Docker engine at $DOCKER_HOST"; return; fi
  command -v dockerd >/dev/null || { echo "engine: no dockerd; run: $0 install" >&2; exit 1; }
  mkdir -p "$D"
  nohup dockerd --data-root "$D/data" --exec-root "$D/exec" -H "unix://$D/docker.sock" \
    --pidfile "$D/dockerd.pid" >"$D/dockerd.log" 2>&1 &
  for _ in $(seq 120); do "$DOCKER" info >/dev/null 2>&1 && break; sleep 0.5; done
  "$DOCKER" info >/dev/null 2>&1 || { echo "engine: dockerd did not start; log:" >&2; tail -n 30 "$D/dockerd.log" >&2; exit 1; }
  echo "engine: started dockerd $("$DOCKER" info --format '{{.ServerVersion}}') pid $(cat "$D/dockerd.pid") at $DOCKER_HOST"
}

stop_engine() {
  [ -f "$D/dockerd.pid" ] || { echo "engine: no private dockerd to stop"; return; }
  local pid; pid=$(cat "$D/dockerd.pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && { echo "engine: dockerd $pid still alive" >&2; exit 1; }
  fi
  rm -f "$D/dockerd.pid"
  for m in "$D"/exec/netns/*; do [ -e "$m" ] && umount "$m" 2>/dev/null || true; done
  echo "engine: stopped dockerd $pid"
}

case ${1:-} in
  install) install_engine ;;
  start) start_engine ;;
  stop) stop_engine ;;
  *) echo "usage: $0 install|start|stop" >&2; exit 2 ;;
esac
