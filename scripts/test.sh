#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need (Python oracle venv, the Kubernetes
# test environment), then runs formatting and lint checks and every test tier.
#   scripts/test.sh            # everything
#   SKIP_E2E=1 scripts/test.sh # without the Kubernetes/S3 environment
set -euo pipefail
cd "$(dirname "$0")/.."
export ARRAYJOB_CACHE=${ARRAYJOB_CACHE:-$HOME/.cache/arrayjob}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ARRAYJOB_CACHE/target}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

echo "== python oracle venv"
ARRAYJOB_PYTHON=$(scripts/setup-python.sh)
export ARRAYJOB_PYTHON

if [ -z "${SKIP_E2E:-}" ] && [ -x tests/env/setup.sh ]; then
  echo "== kubernetes + s3 test environment"
  tests/env/setup.sh
fi

echo "== rustfmt, clippy"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== tests"
cargo test --workspace --locked --release --no-fail-fast
