# syntax=docker/dockerfile:1
# Maestro: build the host and the first-party plugins, then ship them on a slim,
# non-root runtime image.

# ---- build ------------------------------------------------------------------------
FROM rust:1.95-bookworm AS build
WORKDIR /src
RUN rustup target add wasm32-wasip2
# Only what the build reads (migrations are embedded into the binary).
COPY Cargo.toml Cargo.lock ./
COPY host host
COPY sdk sdk
COPY plugins plugins
COPY migrations migrations
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin maestro \
 && install -D target/release/maestro /out/bin/maestro
# First-party plugins, built for wasm32-wasip2, verified and installed with their sha256
# by the binary itself, exactly as `scripts/run` does.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    /out/bin/maestro plugin build plugins/calc plugins/text plugins/web plugins/personas plugins/summarise \
      --out /out/plugins

# ---- runtime ----------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 maestro \
 && useradd --system --uid 10001 --gid maestro --home-dir /var/lib/maestro --create-home maestro
COPY --from=build /out/bin/maestro /usr/local/bin/maestro
COPY --from=build /out/plugins /usr/local/share/maestro/plugins
COPY config/maestro.toml /etc/maestro/maestro.toml
COPY policies /etc/maestro/policies
ENV MAESTRO_CONFIG=/etc/maestro/maestro.toml \
    MAESTRO_LISTEN=0.0.0.0:8080 \
    MAESTRO_DATA_DIR=/var/lib/maestro \
    MAESTRO_PLUGIN_DIR=/usr/local/share/maestro/plugins \
    MAESTRO_POLICY_DIR=/etc/maestro/policies
USER maestro:maestro
WORKDIR /var/lib/maestro
VOLUME ["/var/lib/maestro"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 CMD ["maestro", "healthcheck"]
ENTRYPOINT ["maestro"]
CMD ["serve"]
