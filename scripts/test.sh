#!/bin/sh
# The test command: install what the tests need, lint, type-check, run the suite.
# Works on a fresh machine with Python 3.10+, pip and npm (for Azurite).
set -eu
cd "$(dirname "$0")/.."
./scripts/install-dev.sh
. .venv/bin/activate
echo "== ruff"
ruff check storage_initializer providers tests examples scripts bench
ruff format --check storage_initializer providers tests examples scripts bench
echo "== mypy --strict (core, providers, examples)"
# shellcheck disable=SC2046 # one argument per provider module or package
mypy storage_initializer $(find providers examples -maxdepth 2 -name 'storage_initializer_*' ! -name '*.egg-info' | sort)
echo "== pytest"
python -m pytest "$@"
