#!/usr/bin/env bash
# Issue 15: the MPNet rows on a lent H200 (one GPU, PAR trainings side by side), as run on
# 2026-12-02 (records in experiments/results/mpnet-h200-20261202/).
#   bash experiments/gpu/mpnet_runs.sh setup [join] [prepare] [runs] [collect]
# Carried (git-ignored): .whl/ (pytorch-crf, seqeval, efficientnet-lite-pytorch wheels),
# .carry/data.tar.xz (../shared/data), .carry/models/mpnet-base-fp16 (tools/packaged.py fp16
# --chunk-mb 46 --chunks-dir .carry/mpnet-chunks), one chunk of .carry/mpnet-chunks/ per call,
# .carry/minilm-graphs.tgz (MiniLM-built inter graphs, for the *-minilm-graph row).
# W survives between calls only while the machine stays warm (30 s idle): send the chunks in
# back-to-back calls, and collect in the same call as the runs (a cold machine loses W).
# Env: SEEDS, DATASETS, ROWS (regex over row names), PAR, DEADLINE (s after which nothing new
# starts), EPOCHS and LR (encoder; the trainer's defaults when unset; the MPNet runs of
# 2026-12-02 used EPOCHS=10 LR=5e-5), ENC (the text encoder folder; MiniLM: ENC=$W/carry/models/
# minilm-l6-fp16, carried as .carry/models/minilm-l6-fp16, no `join`), JOBS (a file of
# "dataset row seed" lines to run instead of every row x SEEDS x DATASETS).
# Rows named *-gpt4 read $W/art-gpt4: TWITTER-2017 features and graphs built from the GPT-4
# descriptions (image_text/twitter2017/deqa-gpt4-descriptions.jsonl.gz) instead of BLIP-2.
# `start` launches `runs` in its own process session (it outlives the call while the machine
# stays warm); `poll` waits up to POLL seconds for it, prints progress and collects what finished:
# issue the next call at once (30 s idle releases the machine and kills the runs).
set -uo pipefail
cd "$(dirname "$0")/../.."
W=/root/mner; mkdir -p $W/logs $W/carry
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export OMP_NUM_THREADS=2 MKL_NUM_THREADS=2
ENC=${ENC:-$W/carry/models/mpnet-base-fp16}
PAR=${PAR:-6}; DEADLINE=${DEADLINE:-480}; SEEDS=${SEEDS:-1 2 3 4 5}
TRAIN_ARGS="${EPOCHS:+--epochs $EPOCHS} ${LR:+--lr-encoder $LR} --no-checkpoint --quiet"
CTX="--context inter --context-k 5 --context-subwords 160"
start=$SECONDS; DEADLINE_AT=$(( $(date +%s) + DEADLINE ))

setup() {
    [ -d /tmp/site/torchcrf ] || python3 -m pip install -q --no-index --no-deps --no-compile \
        --no-cache-dir --target /tmp/site .whl/*.whl
    [ -d $W/data ] || { mkdir -p $W/data && tar -C $W/data -xJf .carry/data.tar.xz; }
    cp -rn .carry/. $W/carry/ 2>/dev/null || true
    [ -f .carry/minilm-graphs.tgz ] && mkdir -p $W/minilm && tar -C $W/minilm -xzf .carry/minilm-graphs.tgz
    ls $W/carry/mpnet-chunks
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
}
join() { python3 tools/packaged.py join $ENC; }
prepare() {
    for ds in twitter2017 twitter2015; do
        python3 cli.py extract --data-dir $W/data/shared/data/$ds --artifacts $W/art \
            --text-encoder $ENC --device cuda --quiet 2>&1 | tail -n 12
        python3 cli.py build-graphs --data-dir $W/data/shared/data/$ds --artifacts $W/art \
            --device cuda --quiet 2>&1 | tail -n 6
        python3 cli.py build-graphs --data-dir $W/data/shared/data/$ds --artifacts $W/art \
            --relation intra --intra-view image_global --no-import-rgcn --device cuda --quiet \
            2>&1 | tail -n 3
    done
    local gpt4=$W/data/shared/data/image_text/twitter2017/deqa-gpt4-descriptions.jsonl.gz
    local ds=$W/data/shared/data/twitter2017
    python3 cli.py extract --data-dir $ds --artifacts $W/art-gpt4 --captions $gpt4 \
        --text-encoder $ENC --device cuda --quiet 2>&1 | tail -n 12
    python3 cli.py build-graphs --data-dir $ds --artifacts $W/art-gpt4 --device cuda --quiet \
        2>&1 | tail -n 6
}
jobs() {   # dataset row seed flags... (ROWS: a regex over the row names)
    for seed in $SEEDS; do for ds in ${DATASETS:-twitter2015 twitter2017}; do
        mg=$(ls $W/minilm/artifacts/minilm/graphs/$ds/inter-ours-*.h5 2>/dev/null | head -n1)
        echo "$ds text-only $seed --text-only"
        echo "$ds full $seed"
        echo "$ds ctx-images-k5 $seed --text-only $CTX"
        echo "$ds full-ctx-images-k5 $seed $CTX"
        [ -n "$mg" ] && echo "$ds ctx-images-k5-minilm-graph $seed --text-only $CTX --context-graph $mg"
        echo "$ds full-intra-text $seed --intra-view image_global"
        echo "$ds ctx-labels-k5 $seed --text-only $CTX --context-labels"
        [ $ds = twitter2017 ] && echo "$ds full-gpt4 $seed"
    done; done | awk -v r="${ROWS:-.}" '$2 ~ r'
}
listed() {   # the jobs of JOBS ("dataset row seed" per line) with their flags, in that order
    jobs > $W/all-jobs
    while read -r ds row seed; do
        grep -m1 "^$ds $row $seed " $W/all-jobs || grep -m1 -x "$ds $row $seed" $W/all-jobs
    done < $JOBS
}
one() {
    local ds=$1 row=$2 seed=$3; shift 3
    local slug=$ds-$row-s$seed art=$W/art
    [[ $row == *gpt4* ]] && art=$W/art-gpt4
    ls -d $art/runs/*-$slug 2>/dev/null | grep -qv '\.tmp$' && return 0
    [ "$(date +%s)" -gt "$DEADLINE_AT" ] && return 0
    rm -rf $art/runs/*-$slug.tmp
    python3 cli.py train --data-dir $W/data/shared/data/$ds --artifacts $art --encoder $ENC \
        "$@" --seeds $seed --slug $slug $TRAIN_ARGS > $W/logs/$slug.log 2>&1
    echo "$slug rc=$? $(grep -o 'F1 [0-9.]*' $W/logs/$slug.log | tail -n1) s=$SECONDS"
}
runs() {
    export -f one; export W ENC TRAIN_ARGS DEADLINE_AT
    if [ -n "${JOBS:-}" ]; then listed; else jobs; fi | xargs -P $PAR -L 1 bash -c 'one "$@"' _
}
start() {
    setsid nohup bash "$0" runs > $W/logs/runs.out 2>&1 < /dev/null &
    echo $! > $W/runs.pid
}
poll() {
    local until=$(( SECONDS + ${POLL:-540} ))
    while kill -0 "$(cat $W/runs.pid)" 2>/dev/null && [ $SECONDS -lt $until ]; do sleep 10; done
    cat $W/logs/runs.out; ls $W/art/runs $W/art-gpt4/runs 2>/dev/null | grep -c tmp
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
    collect
}
collect() {
    (cd $W && tar czf $OUT/mpnet-runs.tgz --exclude='*.safetensors' --exclude='*.conll' \
        --exclude='*.png' --exclude='*.tmp' art/runs art-gpt4/runs logs \
        art/graphs/*/manifest.json art-gpt4/graphs/*/manifest.json) 2>/dev/null
    ls $W/art/runs $W/art-gpt4/runs 2>/dev/null | grep -v tmp | grep -c s[0-9]
}
for stage in "$@"; do "$stage"; done
