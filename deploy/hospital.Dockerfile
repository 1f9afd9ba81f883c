# syntax=docker/dockerfile:1.7
# A hospital's SuperNode: flower-supernode plus the ClientApp runtime (torch, Opacus, ...).
# The app code itself arrives from the coordinator with each run (a Flower App Bundle), so the
# image holds only pinned dependencies. PyPI's torch wheels bundle CUDA: with the NVIDIA
# container toolkit on the host and compose.gpu.yaml, the ClientApp trains on the GPU
# (device=auto); without them it uses the CPU.
# Build from the repository root: docker build -f deploy/hospital.Dockerfile -t privmed/hospital:0.1.0 .
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FLWR_HOME=/var/lib/privmed/flwr \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# Exact pins shared with CI: the hospital runs what the tests ran.
COPY requirements.txt /tmp/requirements.txt
RUN pip install -r /tmp/requirements.txt && rm /tmp/requirements.txt

# Unprivileged user; the privacy ledger (state-root) lives on a volume it owns.
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin privmed \
    && mkdir -p /var/lib/privmed/state /var/lib/privmed/flwr \
    && chown -R privmed:privmed /var/lib/privmed
USER privmed
WORKDIR /home/privmed
VOLUME ["/var/lib/privmed/state"]

# The SuperNode's local runtime API (127.0.0.1:9094, never exposed) answers /health.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9094/health', timeout=4)"]
ENTRYPOINT ["flower-supernode"]
