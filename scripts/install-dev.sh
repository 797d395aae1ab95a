#!/bin/sh
# Create .venv (if missing) and install the core, every provider in providers/
# and everything the tests need. Idempotent; used by scripts/test.sh, scripts/demo.sh and CI.
#
# Needs Python 3.10+ with its venv module (Debian/Ubuntu: python3-venv, installed here when
# missing and running as root). Quiet unless it fails: pip's output goes to .venv/install.log
# and is shown when something goes wrong.
#   PYTHON=python3.12 ./scripts/install-dev.sh     # another interpreter
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
fail() { echo "install-dev: $*" >&2; exit 1; }

# -- prerequisites, checked up front ----------------------------------------------------------
command -v "$PYTHON" >/dev/null 2>&1 ||
    fail "$PYTHON not found: install Python 3.10 or newer (Debian/Ubuntu: apt-get install python3 python3-venv)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
    fail "$("$PYTHON" -V 2>&1) is too old: Python 3.10 or newer is needed (PYTHON=... picks another)"

# -- Debian packages the tests drive (as root, when missing) -------------------------------------
# git (git http-backend, the git provider's real server) and git-lfs (the real client that proves
# the LFS test server faithful); docker-registry (the CNCF Distribution registry) for the oci://
# tests, whose service must not start on install (policy-rc.d): the tests run their own instances.
missing=""
command -v git >/dev/null 2>&1 || missing="$missing git"
command -v git-lfs >/dev/null 2>&1 || missing="$missing git-lfs"
command -v docker-registry >/dev/null 2>&1 || missing="$missing docker-registry"
if [ -n "$missing" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "install-dev: apt-get install$missing"
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; created_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086 # word splitting of the package list is intended
    apt-get install -y -qq --no-install-recommends $missing >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends $missing >/dev/null; } ||
        status=$?
    if [ "$created_policy" = 1 ]; then rm -f "$policy"; fi
    [ "${status:-0}" = 0 ] || fail "apt-get install$missing failed"
fi

if [ ! -x .venv/bin/python ]; then
    log=$(mktemp)
    if ! "$PYTHON" -m venv .venv >"$log" 2>&1; then
        rm -rf .venv
        # Debian and Ubuntu ship venv's pip bootstrap separately (python3-venv).
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            echo "install-dev: installing python3-venv (Python's venv module is incomplete)"
            export DEBIAN_FRONTEND=noninteractive
            apt-get install -y -qq --no-install-recommends python3-venv >>"$log" 2>&1 ||
                { apt-get update -qq >>"$log" 2>&1 && apt-get install -y -qq --no-install-recommends python3-venv >>"$log" 2>&1; } ||
                true
        fi
        if ! "$PYTHON" -m venv .venv >>"$log" 2>&1; then
            rm -rf .venv
            cat "$log" >&2
            fail "could not create .venv with $PYTHON: its venv module is missing or incomplete (Debian/Ubuntu: apt-get install python3-venv)"
        fi
    fi
    rm -f "$log"
fi

# -- install, quietly -------------------------------------------------------------------------
LOG=.venv/install.log
set -- -e ".[test]"
count=0
for provider in providers/*/pyproject.toml; do
    set -- "$@" -e "$(dirname "$provider")"
    count=$((count + 1))
done
echo "install-dev: installing the core, $count providers and the test tools into .venv (log: $LOG)"
started=$(date +%s)
# setuptools warns at length about every editable install (BuildBackendWarning): noise here.
if ! { .venv/bin/python -m pip install --disable-pip-version-check --upgrade pip &&
    PYTHONWARNINGS=ignore .venv/bin/python -m pip install --disable-pip-version-check "$@"; } >"$LOG" 2>&1; then
    tail -n 60 "$LOG" >&2
    fail "pip install failed (last lines above; the whole output is in $LOG)"
fi
echo "install-dev: done in $(($(date +%s) - started)) s"
