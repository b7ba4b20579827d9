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
# First-party plugins: each plugins/<name> is a crate built for wasm32-wasip2 and
# installed with its plugin.toml under /out/plugins/<name>/.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    set -e; mkdir -p /out/plugins; \
    for manifest in plugins/*/Cargo.toml; do \
      [ -e "$manifest" ] || continue; \
      dir=$(dirname "$manifest"); name=$(basename "$dir"); \
      cargo build --release --locked --target wasm32-wasip2 --manifest-path "$manifest"; \
      mkdir -p "/out/plugins/$name"; \
      cp "$dir/plugin.toml" "/out/plugins/$name/"; \
      cp target/wasm32-wasip2/release/*.wasm "/out/plugins/$name/"; \
    done

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
    MAESTRO_DATA_DIR=/var/lib/maestro
USER maestro:maestro
WORKDIR /var/lib/maestro
VOLUME ["/var/lib/maestro"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 CMD ["maestro", "healthcheck"]
ENTRYPOINT ["maestro"]
CMD ["serve"]
