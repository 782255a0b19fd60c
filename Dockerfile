# syntax=docker/dockerfile:1
# The arrayjob image: the operator (`arrayjob-operator`) and the command line (`arrayjob`, whose
# `arrayjob worker` is the worker process), on a distroless runtime with the C/C++ runtime
# libraries and no shell.
# The chart runs the operator from it, and the operator starts coordinator and worker pods from the
# same image by default (`--image`).
#
#   docker build -t arrayjob:0.1.0 .
#
# Two ways to fill the runtime stage with the binaries:
#   * the default target `runtime` compiles them in the `builder` stage (the whole repository is
#     the build context);
#   * the target `prebuilt` copies binaries already built by cargo on a Debian 12 host: the build
#     context is a folder holding just `arrayjob` and `arrayjob-operator`
#     (tests/harness builds the test image this way, on a local bookworm base, with podman):
#       podman build --target prebuilt --build-arg RUNTIME_IMAGE=localhost/base:bookworm \
#         -f Dockerfile -t arrayjob:dev DIR_WITH_THE_TWO_BINARIES
# The base images are build arguments, so a machine without access to their registries can pass
# local ones.
#
# Linted by hadolint in operator/tests/chart.rs (no findings allowed).

# The builder: Debian bookworm, like the runtime image, so the binaries link against the same glibc.
# The Rust version is the workspace's rust-version (1.91) or newer.
ARG BUILDER_IMAGE=rust:1.91-bookworm
# The runtime: glibc, libgcc and ca-certificates, no shell, no package manager. The `nonroot` tag
# runs as uid/gid 65532.
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${BUILDER_IMAGE} AS builder
WORKDIR /src
# Cargo needs every workspace member's manifest, so the whole source tree goes in (.dockerignore
# keeps target/, .git and the docs out).
COPY . .
# The cache mounts keep the crates.io downloads and the target folder between builds; the binaries
# are copied out of the cached target folder in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
        --bin arrayjob --bin arrayjob-operator \
    && install -D -m 0755 -t /out \
        target/release/arrayjob target/release/arrayjob-operator

# What both runtime targets share: metadata, the user (numeric, so a base without that user in
# /etc/passwd works too) and the entry point.
FROM ${RUNTIME_IMAGE} AS runtime-base
LABEL org.opencontainers.image.title="arrayjob" \
      org.opencontainers.image.description="arrayjob operator, worker and command line" \
      org.opencontainers.image.licenses="Apache-2.0"
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/arrayjob-operator"]
CMD ["run"]

# Binaries built on the host: the build context is the folder holding them (see above).
FROM runtime-base AS prebuilt
COPY arrayjob arrayjob-operator /usr/local/bin/

# The default target: binaries compiled by the builder stage.
FROM runtime-base AS runtime
COPY --from=builder /out/ /usr/local/bin/
