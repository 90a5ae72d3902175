#!/usr/bin/env bash
# Create (idempotently) the virtual environment that runs a real Triton Inference Server
# without Docker: nvidia-pytriton ships `tritonserver` with the Python backend only, and it
# needs numpy<2, which is why it cannot share the project's environment (Feast needs numpy>=2).
#
#   scripts/setup_triton_venv.sh            # venv at <repo>/.venv-triton
#   RECSYS_TRITON_VENV=/some/dir scripts/setup_triton_venv.sh
#   RECSYS_TRITON_PYTHON=/usr/bin/python3.11 scripts/setup_triton_venv.sh   # base interpreter
#   scripts/setup_triton_venv.sh --force    # rebuild from scratch
#
# Result (all paths relative to the venv):
#   bin/python                                   Python 3.11 with nvidia-pytriton, numpy<2, onnxruntime
#   <site-packages>/pytriton/tritonserver/bin/tritonserver
#   triton_backends/python/                      the Python backend + the 3.11 stub (--backend-directory triton_backends)
#   .recsys-triton-ready                         marker holding the pinned versions; present => nothing to do
#
# scripts/native_servers.py (TritonServer) starts the server from this venv.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RECSYS_TRITON_VENV:-$REPO_ROOT/.venv-triton}"
PY_VERSION="3.11"  # the python_backend_stubs/<version> that we use must match the venv's Python

# Pinned specs. onnxruntime: the same release line as the project's environment, so that the
# model.onnx written there (onnx 1.23 writes IR version 14 by default) loads here too; 1.22 fails
# with "Unsupported model IR version: 14, max supported IR version: 10". 1.32 declares
# numpy>=1.21.6 and was tested with numpy 1.26.4.
PYTRITON_SPEC="nvidia-pytriton==0.7.0"
NUMPY_SPEC="numpy>=1.26,<2"
ORT_SPEC="onnxruntime>=1.32,<1.33"
LAYOUT="layout-1"  # bump when the prepared directory layout changes
WANT="python=$PY_VERSION;$PYTRITON_SPEC;$NUMPY_SPEC;$ORT_SPEC;$LAYOUT"
MARKER="$VENV/.recsys-triton-ready"

log() { echo "[setup_triton_venv] $*"; }

FORCE=0
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

if [[ $FORCE == 0 && -f "$MARKER" && "$(cat "$MARKER")" == "$WANT" \
      && -x "$VENV/bin/python" && -x "$VENV/triton_backends/python/triton_python_backend_stub" ]]; then
  log "ready (cached): $VENV [$WANT]"
  exit 0
fi

# --- base interpreter: must be CPython $PY_VERSION -------------------------------------------------
find_python() {
  local cand
  for cand in "${RECSYS_TRITON_PYTHON:-}" "python$PY_VERSION" python3 python; do
    [[ -n "$cand" ]] || continue
    command -v "$cand" >/dev/null 2>&1 || continue
    if "$cand" -c "import sys; sys.exit(0 if '%d.%d' % sys.version_info[:2] == '$PY_VERSION' else 1)" 2>/dev/null; then
      command -v "$cand"
      return 0
    fi
  done
  return 1
}
if ! BASE_PY="$(find_python)"; then
  echo "[setup_triton_venv] ERROR: no Python $PY_VERSION interpreter found (set RECSYS_TRITON_PYTHON)." >&2
  exit 1
fi

START=$(date +%s)
if [[ $FORCE == 1 && -d "$VENV" ]]; then
  log "--force: removing $VENV"
  rm -rf "$VENV"
fi
rm -f "$MARKER"

if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating venv $VENV with $BASE_PY ($("$BASE_PY" -V 2>&1))"
  "$BASE_PY" -m venv "$VENV"
else
  log "reusing venv $VENV"
fi
VPY="$VENV/bin/python"

log "pip install $PYTRITON_SPEC '$NUMPY_SPEC' '$ORT_SPEC' (first time: a few hundred MB from PyPI)"
# (stderr filter: drop pip's noise about configured local index folders that do not exist)
"$VPY" -m pip install --disable-pip-version-check --quiet --progress-bar off \
  "$PYTRITON_SPEC" "$NUMPY_SPEC" "$ORT_SPEC" \
  2> >(grep -v "is neither a file nor a directory" >&2 || true)

# --- backend directory ----------------------------------------------------------------------------
SITE="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
TRITON_HOME="$SITE/pytriton/tritonserver"
SRC_BACKEND="$TRITON_HOME/backends/python"
STUB="$TRITON_HOME/python_backend_stubs/$PY_VERSION/triton_python_backend_stub"
for p in "$TRITON_HOME/bin/tritonserver" "$SRC_BACKEND" "$STUB"; do
  if [[ ! -e "$p" ]]; then
    echo "[setup_triton_venv] ERROR: expected $p in the nvidia-pytriton wheel, not found." >&2
    exit 1
  fi
done
BACKENDS="$VENV/triton_backends"
log "preparing backend directory $BACKENDS/python (backend files + $PY_VERSION stub)"
rm -rf "$BACKENDS"
mkdir -p "$BACKENDS/python"
cp -a "$SRC_BACKEND/." "$BACKENDS/python/"
cp -a "$STUB" "$BACKENDS/python/triton_python_backend_stub"
chmod +x "$BACKENDS/python/triton_python_backend_stub" "$TRITON_HOME/bin/tritonserver"

# --- sanity check: the venv imports what the model.py needs -----------------------------------------
"$VPY" -c 'import numpy, onnxruntime; assert numpy.__version__.startswith("1."), numpy.__version__; print("[setup_triton_venv] numpy", numpy.__version__, "onnxruntime", onnxruntime.__version__)'

echo "$WANT" > "$MARKER"
log "tritonserver: $TRITON_HOME/bin/tritonserver"
log "done in $(( $(date +%s) - START )) s: $VENV"
