#!/usr/bin/env bash
# Make debian:bookworm-slim locally (no container registry needed) and load it into
# the Docker engine: debootstrap --variant=minbase, trimmed like the official
# docker-library "slim" image (same dpkg excludes and apt settings). ~30-60 s.
#
#   base-image.sh [TAG]      (default debian:bookworm-slim; skipped when the engine has it,
#                             FORCE=1 rebuilds)
# Env: MIRROR (default: this machine's Debian mirror from /etc/apt), SUITE (bookworm),
#      INJECT_HOST_CA=1 (default): copy this machine's extra CAs
#      (/usr/local/share/ca-certificates/*.crt, e.g. a TLS-intercepting egress proxy's)
#      into the image, so that `apt-get install ca-certificates` + pip inside
#      `docker build` trust that proxy. The project's Dockerfile never mentions it.
set -euo pipefail
. "$(dirname "$0")/env.sh"
TAG=${1:-debian:bookworm-slim}
SUITE=${SUITE:-bookworm}

if [ "${FORCE:-0}" != 1 ] && "$DOCKER" image inspect "$TAG" >/dev/null 2>&1; then
  echo "base: $TAG already in the engine"; exit 0
fi
[ "$(id -u)" = 0 ] || { echo "base: debootstrap needs root" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "base: debootstrap missing: scripts/image/engine.sh install" >&2; exit 1; }

detect_mirror() {
  local f u
  for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list; do
    [ -f "$f" ] || continue
    u=$(grep -Eo 'https?://[^ ]+/debian( |$)' "$f" | head -n1 | tr -d ' ' || true)
    [ -n "$u" ] && { echo "$u"; return; }
  done
  echo http://deb.debian.org/debian
}
MIRROR=${MIRROR:-$(detect_mirror)}
SECURITY_MIRROR=${SECURITY_MIRROR:-${MIRROR%/debian}/debian-security}

R=$SI_WORK/rootfs/debian-$SUITE-slim
mkdir -p "$SI_WORK/rootfs/debcache"
rm -rf "$R"
echo "base: debootstrap $SUITE from $MIRROR"
debootstrap --cache-dir="$SI_WORK/rootfs/debcache" --variant=minbase "$SUITE" "$R" "$MIRROR" \
  >"$SI_WORK/rootfs/debootstrap.log" 2>&1 || { tail -n 20 "$SI_WORK/rootfs/debootstrap.log" >&2; exit 1; }

rm -f "$R/etc/apt/sources.list"
cat >"$R/etc/apt/sources.list.d/debian.sources" <<SRC
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
# The docker-library slim tweaks: no docs/man/locales from later installs, no apt caches.
mkdir -p "$R/etc/dpkg/dpkg.cfg.d" "$R/etc/apt/apt.conf.d"
cat >"$R/etc/dpkg/dpkg.cfg.d/docker" <<'X'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
X
cat >"$R/etc/apt/apt.conf.d/docker-clean" <<'X'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
X
echo 'Acquire::Languages "none";' >"$R/etc/apt/apt.conf.d/docker-no-languages"
echo 'Acquire::GzipIndexes "true";' >"$R/etc/apt/apt.conf.d/docker-gzip-indexes"
echo 'Apt::AutoRemove::SuggestsImportant "false";' >"$R/etc/apt/apt.conf.d/docker-autoremove-suggests"
find "$R/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
find "$R/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
rm -rf "$R"/usr/share/{man,groff,info,lintian,linda}/* 2>/dev/null || true
find "$R/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} + 2>/dev/null || true
rm -rf "$R"/var/cache/apt/archives/*.deb "$R"/var/cache/apt/*.bin "$R"/var/lib/apt/lists/* \
  "$R"/var/log/* "$R"/tmp/* "$R"/root/.cache 2>/dev/null || true
mkdir -p "$R/var/lib/apt/lists/partial"
: >"$R/etc/machine-id"; : >"$R/etc/resolv.conf"; echo localhost >"$R/etc/hostname"

if [ "${INJECT_HOST_CA:-1}" = 1 ] && ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
  # Picked up by update-ca-certificates when an image installs ca-certificates.
  mkdir -p "$R/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$R/usr/local/share/ca-certificates/"
  echo "base: added this machine's CAs: $(cd /usr/local/share/ca-certificates && echo *.crt)"
fi

echo "base: rootfs $(du -sh "$R" | cut -f1)"
tar --numeric-owner --xattrs -C "$R" -c . | "$DOCKER" import --change 'CMD ["bash"]' - "$TAG" >/dev/null
rm -rf "$R"
echo "base: imported $TAG"
