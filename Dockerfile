# syntax=docker/dockerfile:1
# keyscope's container image: a static-ish release build on Debian bookworm, run on distroless
# (glibc, CA certificates, no shell) as the non-root user 65532.
#
#   docker build -t keyscope:0.1.0 .
#   docker run --rm -p 50051:50051 -p 9464:9464 keyscope:0.1.0      # memory store, for trying
#
# Needs BuildKit (Docker's default builder) for the cache mounts: the cargo registry and the
# target directory survive between builds, so a source change rebuilds keyscope, not its
# dependencies. No protoc is needed: build.rs compiles the protos with protox.

ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS builder
WORKDIR /src
# What `cargo build` reads: the manifests first, then build.rs and the protos, then the sources
# (Cargo.toml names the bench targets, so their files must exist for cargo to read it).
COPY Cargo.toml Cargo.lock ./
COPY build.rs ./
COPY proto ./proto
COPY benches ./benches
COPY bench ./bench
COPY src ./src
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin keyscope \
    && install -D -m 0755 target/release/keyscope /out/keyscope

FROM ${RUNTIME_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="keyscope" \
      org.opencontainers.image.description="Authorization service for API keys: scopes, checks over gRPC and Envoy ext_authz" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"
COPY --from=builder /out/keyscope /usr/local/bin/keyscope
# Listen on every interface inside the container (keyscope's defaults are loopback only).
ENV KEYSCOPE__SERVER__GRPC_ADDR=0.0.0.0:50051 \
    KEYSCOPE__SERVER__HTTP_ADDR=0.0.0.0:9464
# gRPC (checks, admin API, Envoy ext_authz, health, reflection) and HTTP (/metrics, /livez, /readyz).
EXPOSE 50051 9464
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/keyscope"]
CMD ["serve"]
