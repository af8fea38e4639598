#!/usr/bin/env bash
# Build Horovod 0.28.1 against the pinned torch in .venv (optional: without
# Horovod, --dist=1 uses torch.distributed). Needs a C++ compiler, CMake and
# MPI headers (Debian: build-essential cmake libopenmpi-dev; CUDA + NCCL for
# GPU allreduce, then set HOROVOD_GPU_OPERATIONS=NCCL before running this).
#
# Why the flags: Horovod's setup.py imports torch to find its headers, so pip
# must not build it in an isolated environment (--no-build-isolation); and
# current torch headers need C++17 while Horovod 0.28.1's CMake files ask for
# C++14, so the standard is raised through CMake.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}

"$PY" -c "import torch" || { echo "install_horovod: $PY cannot import torch; run scripts/setup.sh first" >&2; exit 1; }
for tool in cmake c++ mpicxx; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "install_horovod: '$tool' not found (Debian: apt-get install build-essential cmake libopenmpi-dev)" >&2
        exit 1
    }
done

"$PY" -m pip install -q packaging cloudpickle psutil pyyaml cffi wheel setuptools
export HOROVOD_WITH_PYTORCH=1
export HOROVOD_WITHOUT_TENSORFLOW=1
export HOROVOD_WITHOUT_MXNET=1
export HOROVOD_WITH_MPI=1
export HOROVOD_WITH_GLOO=1
export CMAKE_CXX_STANDARD=17
export HOROVOD_CMAKE_FLAGS="${HOROVOD_CMAKE_FLAGS:-} -DCMAKE_CXX_STANDARD=17 -DCMAKE_CXX_STANDARD_REQUIRED=ON"
export CXXFLAGS="${CXXFLAGS:-} -std=c++17"
"$PY" -m pip install --no-build-isolation --no-cache-dir -v "horovod[pytorch]==0.28.1"

"$PY" - <<'EOF'
import horovod.torch as hvd
hvd.init()
print(f"horovod {hvd.__version__ if hasattr(hvd, '__version__') else ''} ok: "
      f"mpi={hvd.mpi_built()} gloo={hvd.gloo_built()} nccl={hvd.nccl_built()}")
EOF
echo "install_horovod: done; 'mpiexec -np N python model/cifar_train.py --dist=1' now uses Horovod"
