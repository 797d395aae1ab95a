#!/bin/sh
# One command, fresh machine: install everything, start a local S3 server and an
# HTTP server, and download a model from each with the real command.
# Needs Python 3.10+ with venv (Debian/Ubuntu: python3-venv); scripts/install-dev.sh checks.
set -eu
cd "$(dirname "$0")/.."
./scripts/install-dev.sh
. .venv/bin/activate
exec python scripts/demo.py
