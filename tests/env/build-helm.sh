#!/usr/bin/env bash
# Builds Helm 3 and Helm 4 from their Go modules (helm.sh/helm/v3/cmd/helm, helm.sh/helm/v4/cmd/helm)
# into ${ARRAYJOB_CACHE:-$HOME/.cache/arrayjob}/helm-<version>/bin/helm. A second run with the same
# versions returns at once.
#
#   build-helm.sh          build (or reuse) HELM3_VERSION and HELM4_VERSION from versions.env
#   build-helm.sh --regen  rewrite tests/env/helm/v{3,4}/go.mod + go.sum for those versions first
#
# Each major version has its own Go module (tests/env/helm/v3, tests/env/helm/v4) that requires
# helm.sh/helm/vN at the pinned version; its go.sum is committed, so the build only downloads what
# go.sum names, through the Go module proxy, into the same module cache as the control plane.
# Prints the two binaries' paths on stdout, one a line: helm 3 first, then helm 4.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"
CACHE="${ARRAYJOB_CACHE:-$HOME/.cache/arrayjob}"

export GOMODCACHE="${ARRAYJOB_GOMODCACHE:-$CACHE/go/mod}"
export GOCACHE="${ARRAYJOB_GOCACHE:-$CACHE/go/build}"
export GOTOOLCHAIN=local
# -mod=readonly: the committed go.mod/go.sum are the pin; a build never rewrites them.
export GOFLAGS="-buildvcs=false -mod=readonly"
export CGO_ENABLED=0

log() { printf '[build-helm] %s\n' "$*" >&2; }

if ! command -v go >/dev/null; then
  log "go is not installed (need go >= the version in tests/env/helm/v*/go.mod)"
  exit 1
fi

regen() {
  local major="$1" version="$2" mod="$HERE/helm/v$1"
  log "regenerating $mod/go.mod for helm.sh/helm/v$major@$version"
  {
    echo "// Builds helm $major for the arrayjob test environment (tests/env/build-helm.sh); see docs/testing.md."
    echo "module arrayjob.dev/testenv/helm$major"
    echo
    echo "go 1.25"
    echo
    echo "require helm.sh/helm/v$major $version"
  } >"$mod/go.mod"
  rm -f "$mod/go.sum"
  (cd "$mod" && GOFLAGS=-buildvcs=false go mod tidy)
  log "commit tests/env/helm/v$major/go.mod and go.sum"
}

# build MAJOR VERSION: builds (or reuses) one helm and prints its path.
build() {
  local major="$1" version="$2" mod="$HERE/helm/v$1"
  local out="$CACHE/helm-$version"
  if ! grep -q "^require helm.sh/helm/v$major $version\$" "$mod/go.mod" 2>/dev/null; then
    log "tests/env/helm/v$major/go.mod does not require helm.sh/helm/v$major $version: run $0 --regen"
    exit 1
  fi
  if [[ -x "$out/bin/helm" && -f "$out/bin/.complete" ]]; then
    log "helm $version already built in $out/bin"
    echo "$out/bin/helm"
    return
  fi
  local pkg="helm.sh/helm/v$major"
  local ldflags="-s -w -X $pkg/internal/version.version=$version"
  ldflags+=" -X $pkg/internal/version.gitTreeState=clean"
  if [[ $major == 3 ]]; then
    # Helm 3 takes the Kubernetes version it assumes for `helm template` and `helm lint` from
    # ldflags (its Makefile derives them from k8s.io/client-go v0.X.Y -> 1.X); Helm 4 reads it
    # from the build info by itself.
    local client_go minor
    client_go="$(awk '$1=="k8s.io/client-go"{print $2; exit}' "$mod/go.mod")"
    minor="$(echo "$client_go" | cut -d. -f2)"
    for p in pkg/lint/rules pkg/chartutil; do
      ldflags+=" -X $pkg/$p.k8sVersionMajor=1 -X $pkg/$p.k8sVersionMinor=$minor"
    done
  fi
  mkdir -p "$out"
  local tmpbin
  tmpbin="$(mktemp -d "$out/bin.tmp.XXXXXX")"
  log "building helm $version from $pkg/cmd/helm (cold: a few minutes; GOMODCACHE=$GOMODCACHE)"
  local start
  start=$(date +%s)
  if ! (cd "$mod" && go build -trimpath -ldflags "$ldflags" -o "$tmpbin/helm" "$pkg/cmd/helm"); then
    rm -rf "$tmpbin"
    log "building helm $version failed"
    exit 1
  fi
  chmod 755 "$tmpbin"
  rm -rf "${out:?}/bin"
  mv "$tmpbin" "$out/bin"
  date -u +%FT%TZ >"$out/bin/.complete"
  log "built in $(($(date +%s) - start)) s: $("$out/bin/helm" version --short)"
  echo "$out/bin/helm"
}

if [[ "${1:-}" == "--regen" ]]; then
  regen 3 "$HELM3_VERSION"
  regen 4 "$HELM4_VERSION"
  exit 0
fi

build 3 "$HELM3_VERSION"
build 4 "$HELM4_VERSION"
