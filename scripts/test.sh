#!/bin/sh
# The test command: install what the tests need, lint, type-check, run the suite.
# Works on a fresh machine with Python 3.10+ (with venv) and Node.js/npm (for Azurite,
# the Azure Storage emulator); as root on Debian/Ubuntu, missing packages are installed.
set -eu
cd "$(dirname "$0")/.."
./scripts/install-dev.sh
if [ -z "${AZURITE_BIN:-}" ] && [ ! -x .tools/node_modules/.bin/azurite-blob ] && ! command -v npm >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "test: installing nodejs and npm (the Azure tests run Azurite, from npm)"
        export DEBIAN_FRONTEND=noninteractive
        { apt-get install -y -qq --no-install-recommends nodejs npm ||
            { apt-get update -qq && apt-get install -y -qq --no-install-recommends nodejs npm; }; } >/dev/null
    else
        echo "test: the Azure tests need Node.js and npm (for Azurite): install them" \
            "(Debian/Ubuntu: sudo apt-get install nodejs npm), or set AZURITE_BIN" >&2
        exit 1
    fi
fi
. .venv/bin/activate
echo "== ruff"
ruff check storage_initializer providers tests examples scripts bench
ruff format --check storage_initializer providers tests examples scripts bench
echo "== mypy --strict (core, providers, examples)"
# shellcheck disable=SC2046 # one argument per provider module or package
mypy storage_initializer $(find providers examples -maxdepth 2 -name 'storage_initializer_*' ! -name '*.egg-info' | sort)
echo "== pytest"
python -m pytest "$@"
