#!/usr/bin/env bash
# Prepares everything the arrayjob e2e tests need; idempotent and fast once cached.
#   1. control plane binaries (build-control-plane.sh; tens of minutes on a new machine, then cached)
#   2. kubectl, weed, hadolint, and helm 3 + helm 4 built from Go modules (install-tools.sh, build-helm.sh)
#   3. cluster PKI (pki.sh)
#   4. podman, runc, mmdebstrap (apt, when missing) and the local Debian base image of the container
#      tests (build-base-image.sh; a minute on a new machine, then cached)
# Writes the locations to $CACHE/testenv.env (read by the Rust harness when the variables below are
# not set) and prints them as `export` lines, so `eval "$(tests/env/setup.sh)"` sets them in a shell.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"
CACHE="${ARRAYJOB_CACHE:-$HOME/.cache/arrayjob}"
mkdir -p "$CACHE"

"$HERE/build-control-plane.sh" >&2
TOOLS_BIN="$("$HERE/install-tools.sh")"
PKI_DIR="$("$HERE/pki.sh")"
BASE_IMAGE="$("$HERE/build-base-image.sh")"

cat >"$CACHE/testenv.env.tmp" <<VARS
ARRAYJOB_K8S_BIN=$CACHE/k8s-$K8S_VERSION/bin
ARRAYJOB_TOOLS_BIN=$TOOLS_BIN
ARRAYJOB_PKI_DIR=$PKI_DIR
ARRAYJOB_BASE_IMAGE=$BASE_IMAGE
VARS
mv "$CACHE/testenv.env.tmp" "$CACHE/testenv.env"
sed 's/^/export /' "$CACHE/testenv.env"
