#!/usr/bin/env bash
# Create .venv/ at the repository root and install the project with everything it needs.
# Re-running is quick: it does nothing when setup.cfg, pyproject.toml and this script are unchanged.
set -euo pipefail
cd "$(dirname "$0")"
python=${PYTHON:-python3}
torch_spec=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
stamp=.venv/.installed
want=$(cat setup.cfg pyproject.toml setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -c "import cli" 2>/dev/null; then
    echo "setup: .venv is up to date"
    exit 0
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first: the pinned build lies on these machines' disk; elsewhere it comes from PyPI.
.venv/bin/python -m pip install -q $torch_spec
.venv/bin/python -m pip install -q -e ".[test]"
echo "$want" > "$stamp"
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
