# syntax=docker/dockerfile:1
# The order service: `docker build -t orders .` then `docker compose up` (see compose.yaml).

# --- build ---------------------------------------------------------------------------------------
# Tags pinned to a version, so that a rebuild takes the same toolchain and base.
FROM rust:1.95-bookworm AS builder
WORKDIR /app

# Dependencies first, against stub sources, so that this layer is rebuilt only when Cargo.toml,
# Cargo.lock or build.rs change.
COPY Cargo.toml Cargo.lock build.rs ./
# Every binary Cargo.toml declares needs a file, even those not built here.
RUN mkdir -p src/bin/orders-load sql benches \
    && echo 'fn main() {}' > src/main.rs \
    && cp src/main.rs src/bin/orders-load/main.rs \
    && cp src/main.rs benches/baseline.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin orders \
    && rm -rf src sql benches

# Then the service itself. COPY keeps the files' old mtimes, which cargo could take for older than
# the stub build: touch them so that the real sources are compiled.
COPY src ./src
COPY benches ./benches
COPY sql ./sql
COPY config ./config
RUN touch src/main.rs src/lib.rs build.rs \
    && cargo build --release --locked --bin orders \
    && cp target/release/orders /usr/local/bin/orders

# --- run -----------------------------------------------------------------------------------------
FROM debian:bookworm-20251229-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin orders
COPY --from=builder /usr/local/bin/orders /usr/local/bin/orders

# The compiled-in default (127.0.0.1:8080) is unreachable from outside a container.
ENV ORDERS_LISTEN=0.0.0.0:8080
USER orders
EXPOSE 8080
STOPSIGNAL SIGTERM
# Liveness from inside the container, with the binary itself (the slim image has no curl):
# GET /healthz on ORDERS_LISTEN, 2 s at most.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["orders", "healthcheck"]
ENTRYPOINT ["orders"]
CMD ["serve"]
