#!/usr/bin/env bash
# Set up everything the project needs on a fresh Debian machine:
# Open MPI (for `mpiexec` and the distributed tests) and a virtual
# environment in .venv with the pinned requirements. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v mpiexec >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing Open MPI (Debian openmpi-bin)" >&2
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openmpi-bin libopenmpi-dev >/dev/null
    else
        echo "setup: mpiexec not found and cannot apt-get install openmpi-bin; the mpiexec test will fail" >&2
    fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.requirements.sha
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    .venv/bin/python -m pip install -q -r requirements.txt
    echo "$want" > "$stamp"
fi
