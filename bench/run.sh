#!/usr/bin/env bash
# arrayjob vs Dask benchmark: one command, one run of the whole matrix.
#
#   bench/run.sh                    # N=200 and N=1000, 5 reps, report in bench/results/
#
# Knobs (environment):
#   SIZES=200,1000      slice counts (1000x1000 uint8 slices, recipe emstack-v1)
#   REPS=5              repetitions per configuration (fresh process each)
#   DIST_REPS=          repetitions of dask-distributed at N>=1000 (default: REPS)
#   CONFIGS=dask-threads,dask-distributed,aj-full,aj-means,aj-fftpath,aj-full-files
#   ARRAYJOB=path       arrayjob binary (default: build it, release, in $CARGO_TARGET_DIR);
#   FLOOR=path          arrayjob-bench-floor binary (machine floors with the engine's crates; built with it);
#   ARRAYJOB_COMMIT=..  the commit it was built from (recorded in the report)
#   ARRAYJOB_CACHE      cache root (default ~/.cache/arrayjob): venv, data set, build
#   ARRAYJOB_SHARED     the shared folder holding bench/ (gen_data.py, requirements.lock);
#                       default <repo>/../shared
#   SKIP_LIMITS=1       skip the machine-limit measurements
#   START_LOADAVG=0.5   wait for a 1-min load average below this before the first timed run
#   EXTRA="..."         more arguments for bench/suite.py
# Every run waits until other processes use < 0.15 core, and is re-run if they used more
# than that while it ran.  All traffic goes to 127.0.0.1.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
CACHE="${ARRAYJOB_CACHE:-$HOME/.cache/arrayjob}"
SHARED="${ARRAYJOB_SHARED:-$REPO/../shared}"
if [ -z "${ARRAYJOB_SHARED:-}" ] && [ ! -d "$SHARED/bench" ]; then
  # a git worktree: shared/ sits beside the main checkout
  COMMON="$(cd "$REPO" && git rev-parse --path-format=absolute --git-common-dir 2>/dev/null || true)"
  [ -n "$COMMON" ] && SHARED="$(dirname "$COMMON")/../shared"
fi
LOCK="$SHARED/bench/requirements.lock"
GEN="$SHARED/bench/gen_data.py"
SIZES="${SIZES:-200,1000}"
REPS="${REPS:-5}"
PY="${PYTHON:-python3}"
[ -f "$LOCK" ] && [ -f "$GEN" ] || { echo "missing $LOCK or $GEN (set ARRAYJOB_SHARED)" >&2; exit 2; }

# 1. the Python environment, once per lock file + interpreter
HASH=$( { cat "$LOCK"; "$PY" -c 'import sys; print(sys.version)'; } | sha256sum | cut -c1-12)
VENV="$CACHE/bench-venv-$HASH"
if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV"
  rm -rf "$VENV.tmp"
  "$PY" -m venv "$VENV.tmp"
  "$VENV.tmp/bin/pip" install -q --upgrade pip
  "$VENV.tmp/bin/pip" install -q -r "$LOCK"
  mv "$VENV.tmp" "$VENV"
fi

# 2. the data set, once per N / size / seed (slice z does not depend on N)
DATA="$CACHE/bench-data"
mkdir -p "$DATA"
for n in ${SIZES//,/ }; do
  d="$DATA/emstack-v1-n$n-1000x1000-s20170117"
  if [ ! -f "$d/manifest.json" ]; then
    echo "== generating $d"
    rm -rf "$d.tmp"
    "$VENV/bin/python" "$GEN" --out "$d.tmp" --n "$n" --h 1000 --w 1000 --seed 20170117
    "$VENV/bin/python" "$GEN" --verify "$d.tmp"
    mv "$d.tmp" "$d"
  fi
done

# 3. the arrayjob binary
if [ -z "${ARRAYJOB:-}" ]; then
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target-bench}"
  echo "== cargo build --release -p arrayjob-cli -p arrayjob-bench-floor (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
  (cd "$REPO" && cargo build --release -q -p arrayjob-cli -p arrayjob-bench-floor)
  ARRAYJOB="$CARGO_TARGET_DIR/release/arrayjob"
  FLOOR="${FLOOR:-$CARGO_TARGET_DIR/release/arrayjob-bench-floor}"
fi

# nginx serves the PNG files to both Dask and arrayjob (Python's http.server burns ~1.25 CPU-s per 1000 files
# on the same 2 cores); the suite falls back to bench/serve.py without it.
if ! command -v nginx >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "== installing nginx-light (Debian)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light) >/dev/null || true
fi
COMMIT="${ARRAYJOB_COMMIT:-$(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo unknown)}"

# 4. the matrix, the limits, the report
ARGS=(--data-root "$DATA" --arrayjob "$ARRAYJOB" --commit "$COMMIT" --results "$HERE/results"
      --scratch "$CACHE/bench-scratch" --sizes "$SIZES" --reps "$REPS"
      --start-loadavg "${START_LOADAVG:-0.5}")
[ -n "${DIST_REPS:-}" ] && ARGS+=(--dist-reps "$DIST_REPS")
[ -n "${CONFIGS:-}" ] && ARGS+=(--configs "$CONFIGS")
[ -n "${SKIP_LIMITS:-}" ] && ARGS+=(--skip-limits)
[ -n "${FLOOR:-}" ] && [ -x "${FLOOR:-}" ] && ARGS+=(--floor "$FLOOR")
mkdir -p "$HERE/results"
# shellcheck disable=SC2086
exec "$VENV/bin/python" "$HERE/suite.py" "${ARGS[@]}" ${EXTRA:-}
