# syntax=docker/dockerfile:1.7
# The coordinator: flower-superlink, which runs each submitted ServerApp in a subprocess, plus
# the `flwr` CLI and a copy of the app (at /app) for submitting runs from inside the container.
# Build from the repository root: docker build -f deploy/coordinator.Dockerfile -t privmed/coordinator:0.1.0 .
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FLWR_HOME=/var/lib/privmed/flwr \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1

# Exact pins shared with CI and the hospitals (the frozen weights are checked by digest, which
# needs the same torch everywhere).
COPY requirements.txt /tmp/requirements.txt
RUN pip install -r /tmp/requirements.txt && rm /tmp/requirements.txt

# The app as `flwr run /app` ships it. Not pip-installed: the app resolves conf/ next to its
# code, and every run carries its own copy anyway.
COPY pyproject.toml README.md .gitignore /app/
COPY conf /app/conf
COPY common /app/common
COPY client /app/client
COPY server /app/server

RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin privmed \
    && mkdir -p /var/lib/privmed/superlink /var/lib/privmed/flwr \
    && chown -R privmed:privmed /var/lib/privmed
USER privmed
WORKDIR /home/privmed
# SuperLink state (registered nodes, runs) lives in a sqlite file on this volume.
VOLUME ["/var/lib/privmed/superlink"]
EXPOSE 9092

# /health over TLS, verified against the federation CA mounted at /certs/ca.crt.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import ssl, urllib.request; urllib.request.urlopen('https://localhost:9092/health', timeout=4, context=ssl.create_default_context(cafile='/certs/ca.crt'))"]
ENTRYPOINT ["flower-superlink"]
