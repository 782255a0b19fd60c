# syntax=docker/dockerfile:1
# The arrayjob image: the operator (`arrayjob-operator`), the worker (`arrayjob-worker`) and the
# command line (`arrayjob`), on a distroless runtime with the C/C++ runtime libraries and no shell.
# The chart runs the operator from it, and the operator starts coordinator and worker pods from the
# same image by default (`--image`).
#
#   docker build -t arrayjob:0.1.0 .
#
# Linted by hadolint in operator/tests/chart.rs (no findings allowed).

# The builder: Debian bookworm, like the runtime image, so the binaries link against the same glibc.
# The Rust version is the workspace's rust-version (1.91) or newer.
FROM rust:1.91-bookworm AS builder
WORKDIR /src
# Cargo needs every workspace member's manifest, so the whole source tree goes in (.dockerignore
# keeps target/, .git and the docs out).
COPY . .
# The cache mounts keep the crates.io downloads and the target folder between builds; the binaries
# are copied out of the cached target folder in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
        --bin arrayjob --bin arrayjob-worker --bin arrayjob-operator \
    && install -D -m 0755 -t /out \
        target/release/arrayjob target/release/arrayjob-worker target/release/arrayjob-operator

# The runtime: glibc, libgcc and ca-certificates, no shell, no package manager. The `nonroot` tag
# runs as uid/gid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="arrayjob" \
      org.opencontainers.image.description="arrayjob operator, worker and command line" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/ /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/arrayjob-operator"]
CMD ["run"]
