# syntax=docker/dockerfile:1
# Multi-stage build of polpo-api: a release binary on a slim Debian runtime, running as a
# non-root user, with a health check on GET /health.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so that source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src ./src
COPY migrations ./migrations
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin polpo \
    && mkdir -p /app/config /data \
    && chown polpo:polpo /data
WORKDIR /app
COPY --from=build /src/target/release/polpo-api /usr/local/bin/polpo-api
COPY config/default.toml /app/config/default.toml
ENV POLPO_BIND=0.0.0.0:8080 \
    DATABASE_URL=sqlite:///data/polpo.db \
    POLPO_LOG_FORMAT=json
VOLUME ["/data"]
USER polpo
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/health || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["polpo-api"]
CMD ["serve"]
