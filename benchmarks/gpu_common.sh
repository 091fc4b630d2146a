# Shared set-up of the GPU scripts (sourced, not run). On the device machine the system python3 holds
# PyTorch; the package runs from the source tree, and Fashion-MNIST travels in ./data (carry=["data"]).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}  # QUICK=1 DEVICE=cpu: a few steps of everything, to check the script without a GPU
export PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export NIN_DATA="${NIN_DATA:-$PWD/data}" NIN_CACHE_DIR="${NIN_CACHE_DIR:-$PWD/runs/cache}"
OUT_DIR=${OUT:-runs/gpu}
mkdir -p "$OUT_DIR"

banner() { printf '\n=== %s (%s) ===\n' "$1" "$(date +%T)"; }

describe_machine() {
    banner "machine"
    command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
    $PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, \
'cuda', torch.cuda.is_available())"
    $PY -c "from nin.data import load_dataset; load_dataset('fashion-mnist', None, 'test')" || {
        echo "Fashion-MNIST missing: before the device call run  mkdir -p data && cp /usr/share/datasets/fashion-mnist/*.gz data/  and carry data"
        exit 2
    }
}
