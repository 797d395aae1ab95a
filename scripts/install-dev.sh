#!/bin/sh
# Create .venv (if missing) and install the core, every provider in providers/
# and everything the tests need. Idempotent; used by scripts/test.sh and CI.
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
set -- -e ".[test]"
for provider in providers/*/pyproject.toml; do
    set -- "$@" -e "$(dirname "$provider")"
done
python -m pip install --quiet "$@"
