#!/usr/bin/env bash
# The main job: extract -> build-graphs -> train -> evaluate on one dataset.
#
#   ./main.sh [--full] [DATA_DIR] [extra train options...]
#
# DATA_DIR defaults to ../shared/data/twitter2017 when it exists, else data/twitter2017. Images are
# used when <DATA_DIR>/images exists or IMAGE_DIR is set; otherwise the captions stand in for them.
# Every stage reuses what an earlier run already cached.
#
# Without a GPU the training is the quick CPU setting, FAST_TRAIN below (fewer epochs, batches of
# similar length: about 8.5 minutes on 2 cores); --full (or any GPU) trains with the trainer's
# defaults (15 epochs at most, random batches). Train options given after DATA_DIR win over both.
set -euo pipefail
cd "$(dirname "$0")"
FAST_TRAIN=(--epochs 6 --length-buckets 50)
full=no
if [ "${1:-}" = "--full" ]; then full=yes; shift; fi
data=${1:-}
[ $# -gt 0 ] && shift
if [ -z "$data" ]; then
    data=../shared/data/twitter2017
    [ -d "$data" ] || data=data/twitter2017
fi
python=.venv/bin/python
images=()
[ -n "${IMAGE_DIR:-}" ] && images=(--image-dir "$IMAGE_DIR")
setting=()
if [ "$full" = no ] && [ "$("$python" -c 'import torch; print(torch.cuda.is_available())')" = False ]
then
    setting=("${FAST_TRAIN[@]}")
    echo "main.sh: the quick CPU setting (${setting[*]}); ./main.sh --full for the full one" >&2
fi

"$python" cli.py extract --data-dir "$data" "${images[@]}"
"$python" cli.py build-graphs --data-dir "$data"
"$python" cli.py train --data-dir "$data" "${setting[@]}" "$@" | tee /dev/stderr \
    | grep -o 'wrote [^ ]*runs/[^ ]*' | tail -n 1 | cut -d' ' -f2 > .last-run
"$python" cli.py evaluate --run "$(cat .last-run)" --split test
