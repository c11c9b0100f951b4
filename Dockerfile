# syntax=docker/dockerfile:1
# The tlsid image: one binary, /tlsid, for the controller (`tlsid controller`,
# the default command), the CRD generator and the mTLS demo workloads.
#
#   docker build -t docker.io/library/tlsid:dev .
#   kind load docker-image docker.io/library/tlsid:dev       # kind
#   k3d image import docker.io/library/tlsid:dev             # k3d
#   helm install tlsid charts/tlsid -n tlsid-system --create-namespace
#
# Needs BuildKit (the default builder since Docker 23) for the cache mounts.

ARG RUST_IMAGE=docker.io/library/rust:1-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# --- build -------------------------------------------------------------------
FROM ${RUST_IMAGE} AS builder
WORKDIR /src
# Everything .dockerignore lets through: the crate may read files beside src/.
COPY . .
# The registry and target/ are cache mounts (kept between builds, not in the
# image), so the binary is copied out in the same step. aws-lc-sys builds
# its C code with the image's gcc; no cmake needed.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin tlsid \
    && cp target/release/tlsid /tlsid

# --- runtime -----------------------------------------------------------------
# distroless/cc: glibc and libgcc for the Rust binary, CA certificates, no
# shell, no package manager. The nonroot tag runs as uid/gid 65532, which the
# chart's securityContext expects.
FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="tlsid" \
      org.opencontainers.image.description="Kubernetes operator that gives workloads mutual-TLS identities" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /tlsid /tlsid
USER 65532:65532
# /healthz, /readyz and /metrics.
EXPOSE 8080
ENTRYPOINT ["/tlsid"]
CMD ["controller"]
