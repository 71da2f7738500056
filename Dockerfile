# The Lightcell sidecar image. Envoy runs from the official image next to it
# (docker-compose.yml); the two share the gRPC Unix socket through a volume.

# Stage 1: build the example plugins from source. componentize-py (for the
# Python example) comes with the dev extra, which stays in this stage.
FROM python:3.11-slim AS plugins
WORKDIR /app
COPY . /app
RUN pip install --no-cache-dir -e '.[dev]' \
    && python plugins/build.py

# Stage 2: what runs in production. The runtime dependencies only (the
# toolchains the micro-VM tier compiles plugins with, zig, wabt and
# wasm-tools, are among them); no test or lint tools.
FROM python:3.11-slim
WORKDIR /app
# The package, the plugin sources and SDK, the guest runtime the micro-VM
# tier compiles, and the Envoy configs (see .dockerignore).
COPY . /app
RUN pip install --no-cache-dir -e .
# The configs' plugin paths point at the built examples.
COPY --from=plugins /app/plugins/examples/build /app/plugins/examples/build

# /dev/kvm is passed through by compose for the micro-VM tier; without it,
# `tier: auto` listeners run in the wasmtime tier.
VOLUME ["/run/lightcell"]
ENTRYPOINT ["lightcell"]
CMD ["serve", "--envoy-config", "/app/envoy-config/compose.yaml", "--socket", "/run/lightcell/lightcell.sock"]
