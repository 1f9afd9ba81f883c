#!/bin/sh
# Start `mlflow server` on PostgreSQL; the password comes from a Docker secret file, so it is
# never in the compose file, the image, or `docker inspect`.
set -eu
password_file=${POSTGRES_PASSWORD_FILE:-/run/secrets/postgres_password}
[ -r "$password_file" ] || { echo "mlflow-entrypoint: cannot read $password_file" >&2; exit 1; }
password=$(cat "$password_file")
exec mlflow server \
    --backend-store-uri "postgresql://${POSTGRES_USER:-mlflow}:${password}@${POSTGRES_HOST:-postgres}:5432/${POSTGRES_DB:-mlflow}" \
    "$@"
