#!/usr/bin/env bash
# Install SafeDreamer (github.com/PKU-Alignment/SafeDreamer) into its own venv, idempotently, and print
# the two lines to paste into a shell (or eval) on stdout.
#
#   bash scripts/install-safedreamer.sh SRC [DEST]
#
# SRC:  a SafeDreamer checkout (the repository root, holding SafeDreamer/train.py) or a source tarball
#       of it (e.g. SafeDreamer-529221f.tar.gz). A checkout is used in place; a tarball is unpacked to
#       DEST/src.
# DEST: where the venv (DEST/venv) and an unpacked tarball go; default $SDS_SAFEDREAMER_HOME, else
#       .safedreamer/ in this repository.
#
# Why a separate venv: SafeDreamer runs on JAX 0.4.13 with numpy 1.23.5 (the oldest cp310 jaxlib on
# PyPI; its README's 0.3.25 has no cp310 wheel), the sweep on JAX 0.6.2 with numpy 1.26.4.
# Two one-line source changes: when tensorflow is not installed, train.py's TensorBoardOutput logger
# (which imports tensorflow in a background thread and crashes later) is commented out; and eval_only's
# diagnostic plots are skipped when the model report has no cost predictions (an upstream KeyError, 3b
# below). An unpacked tarball is patched in DEST/src; a checkout is patched in place only with
# SDS_SAFEDREAMER_PATCH=1 (for the first, installing tensorflow-cpu into the venv also does).
# Prints, on stdout and nothing else there (progress goes to stderr), two lines that paste as they are:
#   export SDS_SAFEDREAMER_SRC=<the directory holding SafeDreamer/train.py>
#   export SDS_SAFEDREAMER_PYTHON=<the venv's python>
# (shell-quoted with printf %q, so a path with spaces pastes too; eval "$(bash scripts/install-safedreamer.sh SRC)").
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SRC=${1:-}
DEST=${2:-${SDS_SAFEDREAMER_HOME:-$ROOT/.safedreamer}}
if [ -z "$SRC" ] || [ ! -e "$SRC" ]; then
  echo "error: SafeDreamer source '${SRC}' not found." >&2
  echo "  usage: bash scripts/install-safedreamer.sh SRC [DEST]  (SRC: a SafeDreamer checkout or its .tar.gz)" >&2
  echo "  fix:   git clone https://github.com/PKU-Alignment/SafeDreamer and pass its path" >&2
  exit 2
fi
mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)
log() { echo "[install-safedreamer] $*" >&2; }
t0=$(date +%s)

# 1) the source: a checkout in place, or a tarball unpacked once per tarball content.
if [ -d "$SRC" ]; then
  CODE=$(cd "$SRC" && pwd)
  PATCH=${SDS_SAFEDREAMER_PATCH:-0}
else
  CODE=$DEST/src
  PATCH=1
  want=$(sha256sum "$SRC" | cut -c1-16)
  if [ "$(cat "$CODE/.sds-tarball" 2>/dev/null)" != "$want" ]; then
    log "unpacking $SRC to $CODE"
    rm -rf "$CODE" && mkdir -p "$CODE"
    tar xzf "$SRC" -C "$CODE" --strip-components=1
    echo "$want" > "$CODE/.sds-tarball"
  fi
fi
if [ ! -f "$CODE/SafeDreamer/train.py" ]; then
  echo "error: $CODE/SafeDreamer/train.py not found: $SRC is not a SafeDreamer repository root." >&2
  echo "  fix: pass the directory that holds SafeDreamer/train.py and SafeDreamer/configs.yaml" >&2
  exit 2
fi

# 2) the venv and its pinned dependency set (reinstalled only when this set changes).
PY=
for c in "${SDS_PYTHON:-}" python3.10 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.10*/bin/python3.10 \
         /usr/bin/python3.10 /usr/local/bin/python3.10; do
  p=$(command -v "$c" 2>/dev/null || true)  # a pyenv shim may exist without a working 3.10 behind it
  if [ -n "$c" ] && [ -n "$p" ] && "$p" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' 2>/dev/null; then
    PY=$p; break
  fi
done
if [ -z "$PY" ]; then
  echo "error: python3.10 not found. cause: SafeDreamer's pinned set (jaxlib 0.4.13, safety-gymnasium 1.0.0) needs" \
       "Python 3.10. fix: install it or set SDS_PYTHON to a python3.10 binary" >&2
  exit 1
fi
VENV=$DEST/venv
REQS=(
  "numpy==1.23.5" "scipy==1.10.1" "jax==0.4.13" "jaxlib==0.4.13" "ml_dtypes==0.5.4" "optax==0.1.4" "chex==0.1.7"
  "tensorflow-probability==0.20.1" "dm-tree==0.1.10" "ruamel.yaml==0.17.21" "cloudpickle==3.1.3" "rich==15.0.0"
  "opencv-python-headless==4.8.1.78" "imageio==2.38.0" "matplotlib==3.7.5" "gymnasium==0.28.1" "mujoco==2.3.3"
  "gymnasium-robotics==1.2.2" "pettingzoo==1.24.3" "xmltodict==1.0.4" "PyYAML==6.0.4"
)
NODEPS=("safety-gymnasium==1.0.0")  # it pins pygame==2.1.0, which SafeDreamer never imports
STAMP=$VENV/.sds-installed
WANT=$(printf '%s\n' "${REQS[@]}" "${NODEPS[@]}" | sha256sum | cut -c1-16)
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  log "installing SafeDreamer's dependencies into $VENV (about a minute with a warm pip cache)"
  export PIP_DISABLE_PIP_VERSION_CHECK=1
  "$VENV/bin/pip" install -q "${REQS[@]}" >&2
  "$VENV/bin/pip" install -q --no-deps "${NODEPS[@]}" >&2
  echo "$WANT" > "$STAMP"
fi

# The one-line source fixes below: FILE's line matching ^LINE_REGEX$ becomes NEW_LINE when patching is on
# (an unpacked tarball, or SDS_SAFEDREAMER_PATCH=1); otherwise WITHOUT_IT is logged. A line already fixed
# no longer matches, so a re-run changes nothing.
source_fix() {  # FILE LINE_REGEX NEW_LINE WHAT WITHOUT_IT
  local file=$1 old=$2 new=$3 what=$4 without=$5
  grep -q "^$old\$" "$file" || return 0
  if [ "$PATCH" = 1 ]; then
    log "patching $file: $what"
    sed -i "s|^$old\$|$new|" "$file"
  else
    log "$without"
  fi
}

# 3) the TensorBoard line, only when tensorflow is absent (nothing else is changed).
TRAIN=$CODE/SafeDreamer/train.py
if ! "$VENV/bin/python" -c "import tensorflow" 2>/dev/null; then
  source_fix "$TRAIN" "      embodied.logger.TensorBoardOutput(logdir)," \
    "      # embodied.logger.TensorBoardOutput(logdir),  # sds: no tensorflow" \
    "tensorflow is not installed: commenting out TensorBoardOutput" \
    "warning: tensorflow is not installed and $TRAIN logs to TensorBoard: training will crash. Fix: $VENV/bin/pip install tensorflow-cpu, or re-run with SDS_SAFEDREAMER_PATCH=1 to comment that line out"
fi

# 3b) an upstream crash (not a tensorflow matter): eval_only.py plots the world model's cost predictions
#     whenever it decodes a vector observation, but agent.py computes them (openl_cost) only when use_cost
#     is False, so eval_only of every use_cost=True vector agent dies with KeyError 'openl_cost' at the end
#     of its first episode. The fix skips those diagnostic plots when there is nothing to plot; the
#     episodes are untouched.
EVAL=$CODE/SafeDreamer/embodied/run/eval_only.py
source_fix "$EVAL" "    if 'openl_observation' in model_report.keys():" \
  "    if 'openl_observation' in model_report.keys() and 'openl_cost' in model_report.keys():  # sds: upstream KeyError" \
  "skip the cost-prediction plots when the report has no openl_cost (upstream KeyError)" \
  "warning: $EVAL crashes (KeyError 'openl_cost') at the end of the first episode of a use_cost=True vector agent. Fix: re-run with SDS_SAFEDREAMER_PATCH=1 to guard that line"

# 3c) eval_only's speed on a CPU: safetygymcoor's eval mode renders a 1024x1024 frame every step for its
#     episode videos whatever --env.safetygymcoor.render says (0.3-1.4 s per agent step in software OpenGL,
#     most of an evaluation's time). The fix makes eval mode honour the flag; conf/task/safedreamer.yaml
#     passes task.vars.eval_video (default false) there. Observations, returns and costs are untouched.
COOR=$CODE/SafeDreamer/embodied/envs/safetygymcoor.py
source_fix "$COOR" "    self._render = render if mode=='train' else True" \
  "    self._render = render  # sds: eval videos only when asked for (task.vars.eval_video)" \
  "eval mode renders its videos only when --env.safetygymcoor.render is True" \
  "note: $COOR renders every evaluation step at 1024x1024 (slow on a CPU). Fix: re-run with SDS_SAFEDREAMER_PATCH=1 so that task.vars.eval_video=false turns it off"

# 3d) the evaluated policy is the trained one: train_eval saves its checkpoint at start and on a wall-clock
#     timer (save_every seconds) but not when the loop reaches --run.steps, so the newest checkpoint (the
#     one eval_only evaluates) lagged up to save_every seconds of training behind (status: "STALE: ID eval
#     of checkpoint 1000 < 1500 trained steps"). The fix also saves on the loop's last pass, once
#     step >= --run.steps; training itself is untouched.
TRAIN_EVAL=$CODE/SafeDreamer/embodied/run/train_eval.py
source_fix "$TRAIN_EVAL" "    if should_save(step):" \
  "    if should_save(step) or not step < args.steps:  # sds: save when training ends, so eval_only sees the trained policy" \
  "save a checkpoint when training reaches --run.steps (eval_only then evaluates the trained policy)" \
  "note: $TRAIN_EVAL saves on a timer only, never when training ends: the evaluated checkpoint lags up to save_every seconds behind (status says STALE). Fix: re-run with SDS_SAFEDREAMER_PATCH=1"

# 4) headless OpenGL: eval_only renders its videos (task.vars.eval_video=true), through EGL (MUJOCO_GL=egl)
#    and Mesa's software rasterizer on a machine without a GPU.
if ! ldconfig -p | grep -q 'libEGL_mesa.so.0' && ! ldconfig -p | grep -q 'libEGL_nvidia.so.0'; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing headless OpenGL (libegl1 libegl-mesa0 libgl1-mesa-dri) for eval_only's rendering"
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q libegl1 libegl-mesa0 libgl1-mesa-dri; } >&2
  else
    log "warning: no EGL library found: SafeDreamer's eval_only cannot render (MUJOCO_GL=egl). Fix: install" \
        "libegl1 libegl-mesa0 libgl1-mesa-dri (Debian/Ubuntu), or the NVIDIA driver's EGL on a GPU box"
  fi
fi

# 5) check that it imports the way train.py does (from the package directory).
(cd "$CODE/SafeDreamer" && MUJOCO_GL=egl "$VENV/bin/python" -c "
import warnings; warnings.filterwarnings('ignore')
import jax, numpy, optax, safety_gymnasium, ruamel.yaml, embodied
assert jax.__version__ == '0.4.13', jax.__version__
") || { echo "error: SafeDreamer's imports fail in $VENV. fix: rm -rf $VENV and re-run this script" >&2; exit 1; }
log "ready in $(( $(date +%s) - t0 )) s: code $CODE, python $VENV/bin/python"
printf 'export SDS_SAFEDREAMER_SRC=%q\n' "$CODE"
printf 'export SDS_SAFEDREAMER_PYTHON=%q\n' "$VENV/bin/python"
