#!/usr/bin/env bash
# The fast tier, for the edit-test loop: every unit test and the integration tests that need neither the
# Kubernetes/S3 environment nor kills and timeouts (see docs/testing.md, "Tiers"). Under 2 minutes once built.
# The whole suite is scripts/test.sh (what CI runs).
#   scripts/test-fast.sh               # all of the fast tier
#   scripts/test-fast.sh -- some_name  # extra arguments go to the test binaries (a name filter)
set -euo pipefail
cd "$(dirname "$0")/.."
export ARRAYJOB_CACHE=${ARRAYJOB_CACHE:-$HOME/.cache/arrayjob}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ARRAYJOB_CACHE/target}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

# The NumPy/zarr-python oracles (a venv cached outside the repo; quick once made).
ARRAYJOB_PYTHON=${ARRAYJOB_PYTHON:-$(scripts/setup-python.sh)}
export ARRAYJOB_PYTHON

fast_tests=(
  # engine
  kernels kernels_numpy sources outputs outputs_zarr schedule_sim fuzz
  # cli: one process, no S3, no kills
  bad_input hostile run_results out_dir pipeline_oracle select_montage stack_sources
  # operator: no API server
  crd progress_fuzz untrusted
  # runtime: loopback only, in one process
  auth cluster frames_fuzz
  # cli
  resources
)
args=(--workspace --locked --release --lib --bins)
for t in "${fast_tests[@]}"; do
  args+=(--test "$t")
done
exec cargo test "${args[@]}" "$@"
