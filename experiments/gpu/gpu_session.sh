#!/usr/bin/env bash
# The commands that produced the GPU figures in README/RESULTS, as run on a lent H100/H200 machine
# that has torch, transformers, h5py, pandas and click but no registry access. What it needs
# travels in git-ignored folders: .whl/ (pytorch-crf, seqeval, efficientnet-lite-pytorch wheels),
# .carry/data.tar.xz (the benchmark text), .carry/models/minilm-l6-fp16 (float16 MiniLM copy).
#
#   bash experiments/gpu/gpu_session.sh setup features bench     # then, in a second call:
#   bash experiments/gpu/gpu_session.sh setup train
#   bash experiments/gpu/gpu_session.sh setup matrix             # issue 6: RESULTS.md (see results_matrix.py)
#   DATASETS=twitter2017 bash experiments/gpu/gpu_session.sh setup features steps   # issue 5: CUDA graphs
#
# Logs and JSON are packed into $OUT/gpu-results.tgz (experiments/gpu/gpu-results.tgz without $OUT).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${GPU_OUT:-/tmp/gpu-out}   # GPU_OUT=$OUT/gpu: logs come back even if the call is cut short
mkdir -p "$out"
trap 'tar czf "${OUT:-experiments/gpu}/gpu-results.tgz" -C "$out" .' EXIT
data=/tmp/mner-data/shared/data
minilm=.carry/models/minilm-l6-fp16
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

setup() {
    [ -d /tmp/site/torchcrf ] || python3 -m pip install -q --no-index --no-deps --no-compile \
        --no-cache-dir --target /tmp/site .whl/*.whl
    [ -d "$data" ] || { mkdir -p /tmp/mner-data && tar -C /tmp/mner-data -xJf .carry/data.tar.xz; }
    if [ -d "$minilm" ] && [ ! -d /tmp/minilm-l6-fp16 ]; then cp -r "$minilm" /tmp/; fi
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
}

features() {
    for ds in ${DATASETS:-twitter2017 twitter2015}; do
        python3 cli.py extract --data-dir "$data/$ds" --text-encoder /tmp/minilm-l6-fp16 --quiet
        python3 cli.py build-graphs --data-dir "$data/$ds" --quiet
    done 2>&1 | tee "$out/features.log"
}

bench() {
    python3 bench/bench_graphs.py --device cuda --sizes 10000,100000,1000000 \
        --out "$out/graphs.json" 2>&1 | tee "$out/bench-graphs.log"
    python3 bench/bench_extract.py --device cuda --images 8192 --batch-size 256 --workers 16 \
        --out "$out/extract.json" 2>&1 | tee "$out/bench-extract.log"
    python3 bench/bench_train.py --device cuda --data-dir "$data/twitter2017" \
        --encoder /tmp/minilm-l6-fp16 --out "$out/train.json" 2>&1 | tee "$out/bench-train.log"
}

# Issue 5, CUDA-graph steps: their GPU tests, then one full TW17 training of each model (wall
# time), then the per-epoch ratio full / text-only with graphs and without (needs features).
steps() {
    # a failing test is reported in its log; the timings still run
    python3 -m pytest -q -rs tests/test_steps.py 2>&1 | tee "$out/steps-tests.log" || true
    for variant in "" --text-only; do
        local name=run-twitter2017${variant:--full} start=$SECONDS
        python3 cli.py train --data-dir "$data/twitter2017" --encoder /tmp/minilm-l6-fp16 \
            $variant --seeds 1 --no-checkpoint --quiet > "$out/$name.log" 2>&1
        echo "wall $((SECONDS - start)) s" | tee -a "$out/$name.log"
        tail -n 4 "$out/$name.log"
    done
    for graphs in "" --no-cuda-graphs; do
        python3 bench/bench_train.py --device cuda --data-dir "$data/twitter2017" \
            --encoder /tmp/minilm-l6-fp16 --nodes synthetic --limit 1600 --epochs 3 $graphs \
            --out "$out/train${graphs:--graphs}.json" 2>&1 | tee "$out/bench-train${graphs}.log"
    done
}

# Every training at once, spread round-robin over the GPUs (small models leave a GPU mostly idle).
# DATASETS, VARIANTS (';'-separated flag sets, "" = full model) and SEEDS choose the matrix.
train() {
    local gpus i=0 datasets=${DATASETS:-twitter2017} seeds=${SEEDS:-1 2 3}
    local IFS_old=$IFS variants
    gpus=$(nvidia-smi -L | wc -l)
    IFS=';' read -r -a variants <<<"${VARIANTS:-;--text-only}"
    IFS=$IFS_old
    for ds in $datasets; do
        for variant in "${variants[@]}"; do
            for seed in $seeds; do
                name="train-$ds${variant// /}-s$seed"
                python3 cli.py train --data-dir "$data/$ds" --encoder "${ENCODER:-/tmp/minilm-l6-fp16}" \
                    $variant --seeds "$seed" --device "cuda:$((i % gpus))" --quiet \
                    > "$out/$name.log" 2>&1 &
                i=$((i + 1))
            done
        done
    done
    wait
    tail -n 12 "$out"/train-*.log
    tar czf "$out/runs.tgz" --exclude='*.safetensors' artifacts/runs
}

# The issue-6 results matrix (experiments/results_matrix.py), every row, resumable: a later call that
# runs this stage again skips finished runs. MATRIX_ARGS adds options (e.g. --rows, --deadline).
matrix() {
    export OMP_NUM_THREADS=4 MKL_NUM_THREADS=4
    python3 experiments/results_matrix.py --data-root "$data" --encoder "${ENCODER:-/tmp/minilm-l6-fp16}" \
        --device cuda --per-gpu "${PER_GPU:-4}" ${MATRIX_ARGS:-} prepare train report \
        2>&1 | tee -a "$out/matrix.log" || true   # exit 1: a run failed, 3: deadline; both reported
    collect
}

# What a matrix has produced so far, without checkpoints or feature files: run records, logs,
# graph files and manifests, RESULTS.md and the CSV/JSON.
collect() {
    tar czf "$out/matrix.tgz" --exclude='*.safetensors' --exclude='features/*/*.h5' \
        --exclude='*.conll' artifacts/matrix RESULTS.md experiments/results/matrix.* 2>/dev/null || true
}

for stage in "$@"; do "$stage"; done
