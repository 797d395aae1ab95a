#!/bin/sh
# Create .venv (if missing) and install the core, every provider in providers/
# and everything the tests need. Idempotent; used by scripts/test.sh and CI.
set -eu
cd "$(dirname "$0")/.."
# Debian packages the tests drive: git (git http-backend, the real git server of the git
# provider's tests) and git-lfs (the real client that proves the LFS test server faithful).
missing=""
command -v git >/dev/null 2>&1 || missing="$missing git"
command -v git-lfs >/dev/null 2>&1 || missing="$missing git-lfs"
if [ -n "$missing" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    # shellcheck disable=SC2086 # word splitting of the package list is intended
    apt-get install -y --no-install-recommends $missing >/dev/null 2>&1 \
        || { apt-get update >/dev/null && apt-get install -y --no-install-recommends $missing >/dev/null; }
fi
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
# Debian's docker-registry (the CNCF Distribution registry) for the oci:// tests; its
# service must not start on install (policy-rc.d), the tests run their own instances.
if ! command -v docker-registry >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; created_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends docker-registry >/dev/null \
        || { apt-get update >/dev/null && apt-get install -y --no-install-recommends docker-registry >/dev/null; }
    if [ "$created_policy" = 1 ]; then rm -f "$policy"; fi
fi
python -m pip install --quiet --upgrade pip
set -- -e ".[test]"
for provider in providers/*/pyproject.toml; do
    set -- "$@" -e "$(dirname "$provider")"
done
python -m pip install --quiet "$@"
