#!/usr/bin/env bash
# The main job: extract -> build-graphs -> train -> evaluate on one dataset, with the defaults.
#
#   ./main.sh [DATA_DIR] [extra train options...]
#
# DATA_DIR defaults to ../shared/data/twitter2017 when it exists, else data/twitter2017. Images are
# used when <DATA_DIR>/images exists or IMAGE_DIR is set; otherwise the captions stand in for them.
# Every stage reuses what an earlier run already cached.
set -euo pipefail
cd "$(dirname "$0")"
data=${1:-}
[ $# -gt 0 ] && shift
if [ -z "$data" ]; then
    data=../shared/data/twitter2017
    [ -d "$data" ] || data=data/twitter2017
fi
python=.venv/bin/python
images=()
[ -n "${IMAGE_DIR:-}" ] && images=(--image-dir "$IMAGE_DIR")

"$python" cli.py extract --data-dir "$data" "${images[@]}"
"$python" cli.py build-graphs --data-dir "$data"
"$python" cli.py train --data-dir "$data" "$@" | tee /dev/stderr | grep -o 'wrote [^ ]*runs/[^ ]*' \
    | tail -n 1 | cut -d' ' -f2 > .last-run
"$python" cli.py evaluate --run "$(cat .last-run)" --split test
