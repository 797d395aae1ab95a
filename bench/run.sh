#!/bin/sh
# The benchmark in one command: install what is missing, then run bench/bench.py.
#   ./bench/run.sh                  # everything (S3, HTTP, GCS, Azure; 3 rounds)
#   ./bench/run.sh --quick          # smoke sizes
#   ./bench/run.sh --help           # options
set -eu
cd "$(dirname "$0")/.."
./bench/setup.sh
exec .venv/bin/python bench/bench.py "$@"
