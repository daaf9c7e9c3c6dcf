#!/usr/bin/env bash
# Stops what infra/team/start.sh started (the Prefect and MLflow servers by pid, SeaweedFS, then PostgreSQL).
set -uo pipefail
source "$(dirname "$0")/env.sh"
for name in prefect mlflow; do
  if [ -s "$TEAM_DIR/$name.pid" ]; then
    pid="$(cat "$TEAM_DIR/$name.pid")"
    pkill -TERM -P "$pid" 2>/dev/null; kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -KILL "$pid" 2>/dev/null; rm -f "$TEAM_DIR/$name.pid"
  fi
done
"$VENV_BIN/python" -m pipelines.object_store stop "$TEAM_DIR/seaweedfs"
if [ -n "$PG_BIN" ] && [ -s "$PG_DATA/PG_VERSION" ]; then
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast stop >/dev/null 2>&1
  else "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast stop >/dev/null 2>&1; fi
fi
echo "team servers stopped"
