#!/usr/bin/env bash
# P1 and P3 on a lent GPU (the `device` tool), in as few device minutes as possible.
#
# 1. Here, with PyPI:   bash bench/gpu_session.sh fetch
#    downloads the packages the device image lacks into .cache/gpu_wheels/ (git-ignored).
# 2. There, one `run` per part, carrying .cache/gpu_wheels (each part fits in 10 minutes):
#      bash bench/gpu_session.sh p1     # train: ours vs reference, batch 8 and 1, profile
#      bash bench/gpu_session.sh p1c    # train, ours: cuDNN autotuning, torch.compile modes
#      bash bench/gpu_session.sh p3     # eval vs train at the default settings, then GPU tests
#      bash bench/gpu_session.sh p1f    # train on FLUX.1 (flux_shape, 1024 px): ours vs reference
#    Results are appended to $OUT/RESULTS_gpu.md (logs and profiles beside it); append the
#    blocks to bench/RESULTS.md here and update its summary.
#
# The device image has python3 with a CUDA torch, transformers, accelerate, pytest; it lacks
# diffusers, hydra-core, omegaconf (+ antlr4), open_clip_torch (the CLIP vocabulary file) and
# may have another peft: those travel as wheels. Nothing there reaches a network.
set -euo pipefail

WHEELS=.cache/gpu_wheels
PART="${1:-}"

# name==version of a package in the lock file (the versions the tests ran with).
locked() { grep -E "^$1==" requirements.lock | cut -d' ' -f1; }

fetch() {
    local pip="${PIP:-.venv/bin/python -m pip}"
    mkdir -p "$WHEELS"
    $pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 -d "$WHEELS" \
        "$(locked diffusers)" "$(locked hydra-core)" "$(locked omegaconf)" \
        "$(locked open-clip-torch)" "$(locked peft)"
    # antlr4-python3-runtime (hydra's parser) is published as a source archive only.
    $pip wheel --no-deps -w "$WHEELS" "$(locked antlr4-python3-runtime)"
    ls -l "$WHEELS"
}

setup() {
    : "${OUT:?run this part on the device machine (OUT is its output folder)}"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$WHEELS"/*.whl
    export PYTHONPATH="/tmp/site:$PWD" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
    R="$OUT/RESULTS_gpu.md"
    python3 -c "import torch, diffusers; print(torch.__version__, diffusers.__version__, \
torch.cuda.get_device_name())"
    nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw --format=csv || true
}

# One benchmark; a failure is logged and the next one still runs.
bench() {
    python3 -m bench "$@" --results "$R" || echo "FAILED ($?): python -m bench $*"
}

p1() {
    setup
    {
        # P1: 512 px, cached latents, bf16, LoRA rank 32, batch 8 (MFU goal) and 1 (overheads),
        # at the default config; then the same work on both sides (--ref-targets ours); then a
        # profile of one window of each (tables in $OUT).
        bench train --model sd15_shape --batch 8 --repeats 2
        bench train --model sd15_shape --batch 1
        bench train --model sd15_shape --batch 8 --ref-targets ours
        bench train --model sd15_shape --batch 8 --windows 1 --profile "$OUT"
    } 2>&1 | tee "$OUT/p1.log"
}

p1c() {
    setup
    {
        # The optional keys: cuDNN autotuning, torch.compile (default mode at batch 8, CUDA
        # graphs at batch 1). Ours only: the reference's numbers are in p1's blocks.
        bench train --model sd15_shape --batch 8 --variants ours \
            --override train.deterministic=false
        bench train --model sd15_shape --batch 8 --variants ours \
            --override train.deterministic=false --override train.compile=true
        bench train --model sd15_shape --batch 1 --variants ours \
            --override train.deterministic=false --override train.compile=reduce-overhead
    } 2>&1 | tee "$OUT/p1c.log"
}

p1f() {
    setup
    {
        # FLUX.1-dev's shape at 1024 px, batch 1, LoRA rank 32 (two ~68 GB fp32 builds, one per
        # variant, cast to bf16 by each): ours vs diffusers' Flux example, then ours with
        # gradient checkpointing (what 24 GB cards need; the memory column shows the saving).
        bench train --model flux_shape --batch 1 --window 5 --windows 2
        bench train --model flux_shape --batch 1 --window 5 --windows 2 --variants ours \
            --override train.gradient_checkpointing=true
    } 2>&1 | tee "$OUT/p1f.log"
}

p3() {
    setup
    {
        # P3: evaluating an epoch vs training it at the default eval settings (epochs scored at
        # strength 1.0, the strength grid once on the best epoch), on the sample data's
        # 30-image epochs and on 150-image epochs (25 repeats of its 6 images), then with the
        # grid at every epoch (eval.grid_epochs=all).
        bench eval --model sd15_shape --epochs 3
        bench eval --model sd15_shape --epochs 3 --repeats 25
        bench eval --model sd15_shape --epochs 3 --override eval.grid_epochs=all
        python3 -m pytest -q -p no:cacheprovider -m gpu tests/integration/test_gpu.py tests/bench \
            || echo "FAILED: GPU tests"
    } 2>&1 | tee "$OUT/p3.log"
}

case "$PART" in
    fetch) fetch ;;
    p1) p1 ;;
    p1c) p1c ;;
    p1f) p1f ;;
    p3) p3 ;;
    *) echo "usage: bash bench/gpu_session.sh fetch|p1|p1c|p1f|p3" >&2; exit 2 ;;
esac
