#!/usr/bin/env bash
# The container runtime of the image tests and the local base image they build on:
#   1. installs podman, runc and mmdebstrap (Debian packages) when one is missing (needs root);
#   2. builds a Debian root filesystem with mmdebstrap (--variant=essential plus BASE_IMAGE_PACKAGES
#      from versions.env: glibc, libgcc, libstdc++ and ca-certificates, like
#      gcr.io/distroless/cc-debian12, plus a shell and coreutils; and distroless' `nonroot` user and
#      group 65532 with its home /home/nonroot, so that a container run as uid 65532 gets gid 65532
#      from /etc/passwd as it would on distroless), cached as
#      ${ARRAYJOB_CACHE:-$HOME/.cache/arrayjob}/base-image-<key>/rootfs.tar (about 150 MB, a minute);
#   3. imports it into podman's image store as localhost/arrayjob-base:<suite>-<key>.
# <key> is derived from the suite and the packages. Prints the image name; a second run returns in
# well under a second. The Dockerfile's RUNTIME_IMAGE build argument takes this image in the tests,
# because gcr.io/distroless cannot be pulled without a registry.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"
CACHE="${ARRAYJOB_CACHE:-$HOME/.cache/arrayjob}"
KEY="$(printf 'v2|%s|%s' "$BASE_IMAGE_SUITE" "$BASE_IMAGE_PACKAGES" | sha256sum | cut -c1-10)"
IMAGE="localhost/arrayjob-base:$BASE_IMAGE_SUITE-$KEY"
DIR="$CACHE/base-image-$KEY"

log() { printf '[build-base-image] %s\n' "$*" >&2; }

missing=()
for tool in podman runc mmdebstrap; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
  if [[ "$(id -u)" != 0 ]]; then
    log "${missing[*]} missing: run as root, or apt-get install podman runc mmdebstrap"
    exit 1
  fi
  log "installing podman, runc and mmdebstrap (apt; ${missing[*]} missing)"
  apt-get update -qq >&2
  # No recommends: crun (which fails on this kind of host: cgroups in hybrid mode), slirp4netns
  # and uidmap are not needed; containers run rootful with runc on the host network or none.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    podman runc mmdebstrap >&2
fi

PODMAN=(podman --runtime runc --cgroup-manager cgroupfs)
if "${PODMAN[@]}" image exists "$IMAGE"; then
  echo "$IMAGE"
  exit 0
fi

if [[ ! -f "$DIR/rootfs.tar" ]]; then
  mkdir -p "$DIR"
  log "building a $BASE_IMAGE_SUITE root filesystem with $BASE_IMAGE_PACKAGES (mmdebstrap, about a minute)"
  rm -f "$DIR/rootfs.tar.tmp"
  mmdebstrap --quiet --variant=essential --include="$BASE_IMAGE_PACKAGES" --format=tar \
    --customize-hook='echo "nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin" >>"$1/etc/passwd"' \
    --customize-hook='echo "nonroot:x:65532:" >>"$1/etc/group"' \
    --customize-hook='install -d -m 0700 -o 65532 -g 65532 "$1/home/nonroot"' \
    "$BASE_IMAGE_SUITE" "$DIR/rootfs.tar.tmp" http://deb.debian.org/debian >&2
  mv "$DIR/rootfs.tar.tmp" "$DIR/rootfs.tar"
fi
log "importing $DIR/rootfs.tar as $IMAGE"
"${PODMAN[@]}" import --quiet --message "arrayjob test base: $BASE_IMAGE_SUITE + $BASE_IMAGE_PACKAGES" \
  "$DIR/rootfs.tar" "$IMAGE" >/dev/null
echo "$IMAGE"
