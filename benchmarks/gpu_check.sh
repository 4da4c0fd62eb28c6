#!/usr/bin/env bash
# The GPU check of issue 18 on a lent machine: one script, at most 8 minutes on one GPU, no network.
#
# Here, once: the wheels the GPU image lacks (about 50 MiB, under the 64 MiB a call carries), into
# .whl/, which .git/info/exclude keeps out of git:
#     bash benchmarks/gpu_check.sh --download
# Then through the device tool: run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=540).
# Without a GPU it runs too (python benchmarks/gpu_check.py): the quantized parts say why they are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(optuna==5.0.0 sqlalchemy==2.1.9 alembic==1.20.1 mako==1.4.3 colorlog==6.12.0 peft==0.21.2
        bitsandbytes==0.50.2)

if [[ "${1:-}" == "--download" ]]; then
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform any -d .whl "${WHEELS[@]}"
    du -sh .whl
    exit 0
fi

# There: the carried wheels and autopeft itself (built from this tree, no network) into /tmp/site.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target /tmp/site .
export PYTHONPATH=/tmp/site HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 480 python3 benchmarks/gpu_check.py
