#!/usr/bin/env bash
# Build Horovod 0.28.1 from source into .venv against the pinned torch, so that
# `mpiexec -np N python model/<dataset>_train.py --dist=1` uses Horovod (as the
# paper's runs did). Optional: without Horovod, --dist=1 uses torch.distributed.
# Idempotent: a second run checks the installed build and exits.
#
#   bash scripts/setup.sh && bash scripts/install_horovod.sh
#
# What it builds: Horovod's PyTorch extension with the MPI and gloo
# controllers, CPU tensor operations over gloo. About 3 minutes on 2 cores.
#
# GPU machines (NCCL variant, not exercised by the project's tests): run it as
#   HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_CUDA_HOME=/usr/local/cuda \
#   HOROVOD_BUILD_CUDA_CC_LIST=80,90 bash scripts/install_horovod.sh
# It then additionally needs a CUDA toolkit with nvcc of the same major version
# as torch's CUDA (torch.version.cuda; HOROVOD_CUDA_HOME points at it), and the
# compute capabilities of the GPUs in HOROVOD_BUILD_CUDA_CC_LIST. NCCL is taken
# from the nvidia-nccl wheel that torch already installed in .venv (headers and
# libnccl.so.2 under site-packages/nvidia/nccl), unless HOROVOD_NCCL_HOME is set.
#
# Why each step (Horovod 0.28.1 predates torch 2.14; measured on Debian 12,
# cmake 3.25, g++ 12, Open MPI 4.1):
#  * torch 2.14's headers refuse anything below C++20 (torch/all.h), while
#    Horovod's CMakeLists.txt and horovod/torch/CMakeLists.txt both say
#    `set(CMAKE_CXX_STANDARD 14)`. CXXFLAGS=-std=... loses against that line,
#    and 0.28.1's setup.py never passes HOROVOD_CMAKE_FLAGS to cmake, so the
#    only lever is to patch the two lines in the unpacked sdist.
#  * pip installs the CUDA build of torch even on machines without a GPU; a
#    CUDA torch makes Horovod's torch part add CUDA (horovod/torch/CMakeLists:
#    `Pytorch_CUDA AND NOT HAVE_CUDA -> add_cuda()`), which needs CMake's
#    FindCUDAToolkit to succeed. No system CUDA toolkit is needed: the CUDA
#    runtime wheel that came with torch (site-packages/nvidia/cu<major>: include/
#    and lib/libcudart.so.<major>) is enough once CUDAToolkit_ROOT and
#    CMAKE_LIBRARY_PATH point at it and an unversioned libcudart.so link exists
#    (find_library looks for "libcudart.so"; the wheel ships only the
#    versioned name). The link lives inside .venv and changes nothing for torch.
#  * HOROVOD_BUILD_CUDA_CC_LIST=90 (one architecture) keeps any nvcc work small
#    where an nvcc exists; on a CPU machine nothing is compiled for the GPU.
#  * HOROVOD_WITH_* make the build fail loudly instead of silently leaving out
#    PyTorch, MPI or gloo; HOROVOD_WITHOUT_* skip TensorFlow and MXNet.
#    HOROVOD_CPU_OPERATIONS=GLOO: CPU allreduces go over gloo (the MPI
#    controller still coordinates ranks launched by mpiexec).
#  * --no-build-isolation: setup.py and CMake import the torch in .venv to find
#    its headers, libraries and ABI; an isolated build would see no torch or
#    a different one. --no-cache-dir: never reuse a wheel built against another
#    torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
HOROVOD_VERSION=0.28.1
# sha256 of horovod-0.28.1.tar.gz as published on PyPI: the patches below are
# written for exactly this source.
SDIST_SHA256=92a43f5a94c43907a56805bad15f19700c62ffc83b7ca483f9e104e229f67ef0
# Horovod's own runtime requirements (cloudpickle and packaging come with
# requirements.txt), pinned like everything else; wheel builds the wheel.
DEPS="psutil==7.2.2 PyYAML==6.0.4 cffi==2.1.1 pycparser==3.12 wheel==0.48.0"

die() { echo "install_horovod: $*" >&2; exit 1; }

"$PY" -c "import torch" 2>/dev/null || die "$PY cannot import torch; run scripts/setup.sh first"

# Installed already, built by this script (stamp: this file and the torch it
# was built against), and importable? Then there is nothing to do.
stamp=$("$PY" -c "import sys; print(sys.prefix)")/.horovod.sha
want=$( { cat scripts/install_horovod.sh; "$PY" -c "import torch; print(torch.__version__)"; printenv HOROVOD_GPU_OPERATIONS || true; } | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] &&
   "$PY" -c "import horovod, horovod.torch; assert horovod.__version__ == '$HOROVOD_VERSION'" 2>/dev/null; then
    echo "install_horovod: Horovod $HOROVOD_VERSION already installed and importable"
    exit 0
fi

# Build tools: the compiler, CMake, the MPI headers and wrappers, and the
# Python headers (Horovod's torch part includes Python.h).
missing=
for tool in cmake c++ make mpicxx mpiexec; do
    command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
done
"$PY" -c "import os, sysconfig, sys; sys.exit(not os.path.isfile(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))" ||
    missing="$missing Python.h"
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "install_horovod: installing build tools (missing:$missing)" >&2
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential cmake \
            openmpi-bin libopenmpi-dev python3-dev >/dev/null
    else
        die "missing:$missing (Debian: apt-get install build-essential cmake openmpi-bin libopenmpi-dev python3-dev)"
    fi
fi

"$PY" -m pip install -q $DEPS

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PY" -m pip download -q --no-binary :all: --no-deps -d "$work" "horovod==$HOROVOD_VERSION"
sdist="$work/horovod-$HOROVOD_VERSION.tar.gz"
echo "$SDIST_SHA256  $sdist" | sha256sum -c --quiet - || die "unexpected contents of $sdist"
tar -xzf "$sdist" -C "$work"
src="$work/horovod-$HOROVOD_VERSION"

for f in CMakeLists.txt horovod/torch/CMakeLists.txt; do
    grep -q 'set(CMAKE_CXX_STANDARD 14)' "$src/$f" || die "$f: no 'set(CMAKE_CXX_STANDARD 14)' to patch"
    sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 20)/' "$src/$f"
done

cuda_major=$("$PY" -c "import torch; print((torch.version.cuda or '').split('.')[0])")
if [ -n "$cuda_major" ]; then
    site=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    cudart="$site/nvidia/cu$cuda_major"
    [ -f "$cudart/lib/libcudart.so.$cuda_major" ] && [ -f "$cudart/include/cuda_runtime.h" ] ||
        die "torch is a CUDA $cuda_major build but $cudart has no CUDA runtime (reinstall requirements.txt)"
    ln -sfn "libcudart.so.$cuda_major" "$cudart/lib/libcudart.so"
    export CUDAToolkit_ROOT="$cudart"
    export CMAKE_LIBRARY_PATH="$cudart/lib${CMAKE_LIBRARY_PATH:+:$CMAKE_LIBRARY_PATH}"
    export HOROVOD_BUILD_CUDA_CC_LIST=${HOROVOD_BUILD_CUDA_CC_LIST:-90}
    if [ "${HOROVOD_GPU_OPERATIONS:-}" = NCCL ] && [ -z "${HOROVOD_NCCL_HOME:-}" ]; then
        nccl="$site/nvidia/nccl"
        [ -f "$nccl/lib/libnccl.so.2" ] || die "HOROVOD_GPU_OPERATIONS=NCCL: no $nccl/lib/libnccl.so.2; set HOROVOD_NCCL_HOME"
        ln -sfn libnccl.so.2 "$nccl/lib/libnccl.so"
        export HOROVOD_NCCL_HOME="$nccl"
    fi
elif [ -n "${HOROVOD_GPU_OPERATIONS:-}" ]; then
    die "HOROVOD_GPU_OPERATIONS=$HOROVOD_GPU_OPERATIONS needs a CUDA build of torch"
fi

export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_MPI=1 HOROVOD_WITH_GLOO=1
export HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1
export HOROVOD_CPU_OPERATIONS=GLOO
# setup.py runs make with -j8 unless MAKEFLAGS is set; match the cores instead
# (each torch translation unit takes about 1 GB of memory to compile).
export MAKEFLAGS=${MAKEFLAGS:--j$(nproc)}
echo "install_horovod: building Horovod $HOROVOD_VERSION against torch $("$PY" -c 'import torch; print(torch.__version__)') (a few minutes)" >&2
log="$work/build.log"
if ! "$PY" -m pip install --no-build-isolation --no-cache-dir --no-deps -v "$src" >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    die "the Horovod build failed (last lines above)"
fi

"$PY" - <<'EOF'
import horovod
import horovod.torch as hvd
assert hvd.mpi_built() and hvd.gloo_built(), "Horovod built without MPI or gloo"
print(f"install_horovod: Horovod {horovod.__version__} ok: mpi={hvd.mpi_built()} "
      f"gloo={hvd.gloo_built()} nccl={hvd.nccl_built()}")
EOF
echo "$want" > "$stamp"
