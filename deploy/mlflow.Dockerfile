# syntax=docker/dockerfile:1.7
# MLflow tracking server backed by PostgreSQL, same MLflow version as requirements.txt.
# Build from the repository root: docker build -f deploy/mlflow.Dockerfile -t privmed/mlflow:3.17.2 .
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

RUN pip install mlflow==3.17.2 psycopg2-binary==2.9.13

COPY deploy/mlflow-entrypoint.sh /usr/local/bin/mlflow-entrypoint.sh
RUN useradd --uid 10002 --create-home --shell /usr/sbin/nologin mlflow \
    && mkdir -p /var/lib/mlflow/artifacts && chown -R mlflow:mlflow /var/lib/mlflow
USER mlflow
VOLUME ["/var/lib/mlflow/artifacts"]
EXPOSE 5000

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://localhost:5000/health', timeout=4)"]
# The entrypoint adds the PostgreSQL store URI (password read from a Docker secret), then
# passes every argument on to `mlflow server`.
ENTRYPOINT ["mlflow-entrypoint.sh"]
