#!/bin/sh
# One command, fresh machine: install everything, start a local S3 server and an
# HTTP server, and download a model from each with the real command.
set -eu
cd "$(dirname "$0")/.."
./scripts/install-dev.sh
. .venv/bin/activate
exec python scripts/demo.py
