# syntax=docker/dockerfile:1
#
# selfheal-exporter container image.
#
#   docker build -t selfheal-exporter:0.1.0 .
#
# Build stage: the official Rust image on Debian 12 (bookworm); the crate needs Rust >= 1.89
# (edition 2024). --locked builds exactly Cargo.lock.
#
# Final stage: distroless cc-debian12, nonroot variant. The binary links glibc, libm and
# libgcc_s dynamically (Rust's default Linux target); that image has exactly those (the
# same Debian 12 glibc the build stage links against), plus the CA certificates that
# HTTPS probe targets are verified against (rustls reads the system store), tzdata, and a
# nonroot user 65532; no shell, no package manager. (A static musl build on scratch would
# also work, but would need the CA bundle copied in, a musl toolchain in the build stage,
# and musl's allocator is markedly slower for this allocation-heavy JSON decoding.)
#
# Keep the two Debian releases in step (bookworm <-> debian12, trixie <-> debian13): a binary
# built against a newer glibc does not start on an older one.
#
# Pin the tags to digests (FROM image:tag@sha256:...) in your own pipeline for
# reproducible builds; never `latest`.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Only what the build reads (see .dockerignore): the workspace manifests, the sources of
# both workspace members, and benches (declared in Cargo.toml, so they must exist).
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p selfheal-exporter --bin selfheal-exporter \
    && install -D -m 0755 target/release/selfheal-exporter /out/selfheal-exporter

FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="selfheal-exporter" \
      org.opencontainers.image.description="Measures how well Kubernetes workloads heal themselves: restarts by cause, OOMKills, time to recover" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /out/selfheal-exporter /usr/local/bin/selfheal-exporter
# distroless' "nonroot" user, numeric so that Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
# /metrics, /healthz, /readyz, /api/v1/incidents.
EXPOSE 9964
ENTRYPOINT ["/usr/local/bin/selfheal-exporter"]
