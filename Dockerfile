# keygate container image.
#
#   docker build -t keygate:local .
#   docker run --rm -p 8000:8000 -v keygate-data:/var/lib/keygate keygate:local
#
# Without configuration keygate runs in its embedded mode: SQLite plus generated secrets in
# ./data, i.e. /var/lib/keygate/data (mount a volume at /var/lib/keygate to keep them).
# With DATABASE_URL=postgres://... and REDIS_URL=redis://... it runs in enterprise mode; see
# deploy/README.md for the variables that are then required.

# ---------------------------------------------------------------------------------------------
# Build stage
# ---------------------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /build

# 1. Dependencies only: the manifests plus stub sources, so this layer (the slow part) is reused
#    as long as Cargo.toml, Cargo.lock and migration/Cargo.toml do not change. Cargo refuses a
#    manifest whose declared targets are missing, so every [[bench]], [[test]] and [[bin]] path in
#    Cargo.toml gets a stub here. scripts/check-deploy.sh replays these lines in a temp dir and runs
#    `cargo metadata --locked --offline` there, so CI fails when a target is added without a stub.
COPY Cargo.toml Cargo.lock ./
COPY migration/Cargo.toml migration/Cargo.toml
RUN mkdir -p src migration/src tests/it benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs migration/src/lib.rs \
    && echo 'fn main() {}' > tests/it/main.rs \
    && echo 'fn main() {}' > benches/hot_path.rs
# Only the server binary: the image has no use for src/bin/keygate-mock-upstream (a test double).
RUN cargo build --release --locked --bin keygate \
    && rm -rf src migration/src

# 2. The real sources. COPY keeps the files' own modification times, which can be older than the
#    stub build above; touch them and drop the stubs' fingerprints so cargo rebuilds both crates.
#    The test and bench stubs stay: the manifest still declares them.
COPY src src
COPY migration/src migration/src
RUN touch src/main.rs src/lib.rs migration/src/lib.rs \
    && rm -rf target/release/.fingerprint/keygate-* target/release/.fingerprint/migration-*
RUN cargo build --release --locked --bin keygate \
    && ./target/release/keygate --version | grep -q "^keygate "

# ---------------------------------------------------------------------------------------------
# Runtime stage
# ---------------------------------------------------------------------------------------------
FROM debian:bookworm-slim

LABEL org.opencontainers.image.title="keygate" \
      org.opencontainers.image.description="LLM API gateway: many upstream keys behind one stable endpoint per tenant slug" \
      org.opencontainers.image.licenses="Apache-2.0"

# TLS is rustls (ring); no OpenSSL at run time. The upstream HTTPS client verifies certificates
# against the system trust store (rustls-platform-verifier), hence ca-certificates.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# Non-root user; /var/lib/keygate is the working directory and holds ./data in embedded mode.
RUN groupadd --system --gid 10001 keygate \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/keygate --no-create-home \
       --shell /usr/sbin/nologin keygate \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/keygate

COPY --from=builder /build/target/release/keygate /usr/local/bin/keygate

WORKDIR /var/lib/keygate
USER 10001:10001

EXPOSE 8000

# No HEALTHCHECK: the image carries no HTTP client. Orchestrators probe GET /healthz (liveness)
# and GET /readyz (database and Redis reachable) on port 8000.
ENTRYPOINT ["keygate"]
CMD ["serve"]
