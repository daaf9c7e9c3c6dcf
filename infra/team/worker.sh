#!/usr/bin/env bash
# A Prefect process worker for the pipeline's deployments (`lmforge schedule` without --serve):
# it polls the work pool and runs each flow run as a subprocess of this checkout's .venv.
# Run one per machine that should execute pipelines (next to the data, or a Ray head).
#   PREFECT_API_URL=http://127.0.0.1:4200/api bash infra/team/worker.sh [POOL]
set -euo pipefail
POOL="${1:-lmforge-process}"
VENV_BIN="${LMFORGE_VENV_BIN:-$(cd "$(dirname "$0")/../.." && pwd)/.venv/bin}"
: "${PREFECT_API_URL:?set PREFECT_API_URL to the Prefect server (e.g. http://127.0.0.1:4200/api)}"
exec "$VENV_BIN/prefect" worker start --pool "$POOL" --type process
