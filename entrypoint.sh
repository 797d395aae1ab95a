#!/bin/sh
# KServe starts the init container as: IMAGE SRC_URI DEST_PATH [SRC_URI DEST_PATH ...]
# exec: Python becomes the process itself, so signals reach it and its exit status is the container's.
set -eu
exec /opt/venv/bin/storage-initializer "$@"
