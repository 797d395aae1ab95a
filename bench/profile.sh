#!/bin/sh
# Profile this project on one source and dataset with py-spy (see bench/profile.py).
#   ./bench/profile.sh s3 small            # full-size dataset
#   ./bench/profile.sh s3 large --quick --native
#   ./bench/profile.sh s3 medium --env STORAGE_INITIALIZER_CONCURRENCY=8
set -eu
cd "$(dirname "$0")/.."
./bench/setup.sh
exec .venv/bin/python bench/profile.py "$@"
