# syntax=docker/dockerfile:1
# initdesk-gateway container image. Build: docker build -t initdesk-gateway .
# Run and operate: docs/operations.md.

# ---- build -------------------------------------------------------------------------------
FROM rust:1.95-slim-bookworm AS builder
WORKDIR /src

# Dependencies first, against stand-in sources: this layer stays cached until Cargo.toml or
# Cargo.lock change. (The bench and test targets named in Cargo.toml must exist as files.)
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches tests/it \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs tests/it/main.rs \
    && echo 'fn main() {}' > benches/pipeline.rs \
    && cargo build --release --locked \
    && rm -rf src

# The real sources. migrations/ is embedded into the binary at compile time (sqlx::migrate!).
COPY src ./src
COPY migrations ./migrations
# COPY keeps the files' old mtimes: touch the crate roots so cargo rebuilds over the stand-ins.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && cp target/release/initdesk-gateway /usr/local/bin/initdesk-gateway

# ---- runtime -----------------------------------------------------------------------------
FROM debian:bookworm-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 initdesk \
    && useradd --system --uid 10001 --gid initdesk --no-create-home \
        --home-dir /var/lib/initdesk-gateway --shell /usr/sbin/nologin initdesk \
    && install -d -o initdesk -g initdesk -m 0750 /var/lib/initdesk-gateway

COPY --from=builder /usr/local/bin/initdesk-gateway /usr/local/bin/initdesk-gateway

# State (SQLite database, attachments, raw mail, the reply-token secret) goes to ./data under
# this directory with the default configuration: mount a volume here.
WORKDIR /var/lib/initdesk-gateway
USER 10001:10001

# The built-in defaults listen on 127.0.0.1, which nothing outside the container can reach;
# listen on every interface instead. Environment variables win over a configuration file, so
# set these (not smtp.listen / http.listen in the file) to change the ports.
ENV INITDESK_SMTP_LISTEN=0.0.0.0:2525 \
    INITDESK_HTTP_LISTEN=0.0.0.0:8080
EXPOSE 2525 8080

# curl is not in the image: bash's /dev/tcp sends GET /healthz and expects a 200 status line.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["bash", "-c", "port=${INITDESK_HTTP_LISTEN##*:}; exec 3<>/dev/tcp/127.0.0.1/${port:-8080} && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && IFS= read -r -t 4 status <&3 && [[ $status == HTTP/1.?' 200'* ]]"]

# SIGTERM (docker stop) drains open sessions for up to 30 s: give it `docker stop -t 45`.
STOPSIGNAL SIGTERM
ENTRYPOINT ["initdesk-gateway"]
CMD ["serve"]
