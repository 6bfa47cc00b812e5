# syntax=docker/dockerfile:1
# aio-gateway: a cached dependency layer (cargo-chef), a release build, a small non-root runtime.
#
#   docker build -t aio-gateway .
#   docker run -e DATABASE_URL=postgres://… -p 8080:8080 aio-gateway
#
# Config is baked in at /app/config (gateway.toml, models.toml); override any key with
# AIO__SECTION__KEY environment variables, or mount another /app/config.

ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-slim-bookworm AS chef
RUN cargo install cargo-chef --locked --version ^0.1
WORKDIR /build

# The dependency graph only: this layer changes when Cargo.toml/Cargo.lock do, not with the code.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /build/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked --bin aio-gateway

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /app --shell /usr/sbin/nologin aio
WORKDIR /app
COPY --from=builder /build/target/release/aio-gateway /usr/local/bin/aio-gateway
COPY config /app/config
# Result images (data/files) and, when DATABASE_URL is unset, the SQLite database (data/aio-gateway.db):
# mount a volume here (with PostgreSQL and several replicas, one shared by all of them for the files).
RUN mkdir -p /app/data/files && chown -R aio:aio /app/data
USER aio
ENV AIO__SERVER__LISTEN=0.0.0.0:8080 \
    AIO__LOG__FORMAT=json \
    AIO__FILES__DIR=/app/data/files
EXPOSE 8080
VOLUME ["/app/data"]
# `healthcheck` calls /readyz on server.listen's port: ready means the database is reachable.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 CMD ["aio-gateway", "healthcheck"]
# serve: migrate, then serve. SIGTERM stops it gracefully within server.shutdown_grace_secs.
STOPSIGNAL SIGTERM
ENTRYPOINT ["aio-gateway"]
CMD ["serve"]
