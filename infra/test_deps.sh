#!/usr/bin/env bash
# The Debian packages some tests need besides the Python environment: chromium (the headless
# browser checks of the dashboard, Prefect's and MLflow's UIs) and postgresql (the team-server
# test). Installed here, before pytest starts, when running as root (CI); otherwise this says
# which are missing, and the tests that need them skip with that reason.
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
[ "${#missing[@]}" -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[test-deps] apt-get install ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
else
  echo "[test-deps] not root: the tests that need ${missing[*]} will skip (apt-get install ${missing[*]})" >&2
fi
