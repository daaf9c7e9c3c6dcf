# Settings shared by the team-server scripts (sourced, not run). Everything binds 127.0.0.1
# unless LMFORGE_TEAM_HOST says otherwise; put TLS and auth in front before widening it.
: "${LMFORGE_HOME:=$(pwd)/.lmforge}"
TEAM_DIR="${LMFORGE_TEAM_DIR:-$LMFORGE_HOME/team}"
TEAM_HOST="${LMFORGE_TEAM_HOST:-127.0.0.1}"
PG_PORT="${LMFORGE_PG_PORT:-5433}"
MLFLOW_PORT="${LMFORGE_MLFLOW_PORT:-5000}"
PREFECT_PORT="${LMFORGE_PREFECT_PORT:-4200}"
S3_PORT="${LMFORGE_S3_PORT:-8333}"
PG_DATA="$TEAM_DIR/postgres"
PG_USER=lmforge
PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
VENV_BIN="${LMFORGE_VENV_BIN:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/.venv/bin}"
mkdir -p "$TEAM_DIR"
if [ ! -s "$TEAM_DIR/pg-password" ]; then
  (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$TEAM_DIR/pg-password")
fi
PG_PASSWORD="$(cat "$TEAM_DIR/pg-password")"
PG_URL="$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT"
