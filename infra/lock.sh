#!/usr/bin/env bash
# Re-freeze requirements.lock from pyproject.toml's ranges in a scratch venv, with hashes.
#
# The lock is the exact install setup makes (with pip's hash checking) and CI tests; pyproject
# states the ranges lmforge supports. torch is the one entry without hashes: it is the CPU or
# CUDA build the machine serves (see infra/setup.sh), so its file differs from machine to machine.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"${PYTHON:-python3}" -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q --upgrade pip==25.3 uv==0.13.9
"$tmp/venv/bin/pip" install -q "torch==2.13.0"
# deepspeed is a source package whose build needs torch: build it first, in place
"$tmp/venv/bin/pip" install -q setuptools wheel
DS_BUILD_OPS=0 "$tmp/venv/bin/pip" install -q --no-build-isolation "torch==2.13.0" \
  "$(grep -o '"deepspeed[^"]*"' pyproject.toml | tr -d '"')"
"$tmp/venv/bin/pip" install -q -e ".[test]"
"$tmp/venv/bin/pip" freeze --exclude-editable \
  | grep -v -E '^(torch|pip|setuptools|wheel|uv)==' > "$tmp/frozen.txt"
torch=$("$tmp/venv/bin/pip" freeze | grep '^torch==' | sed -E 's/\+[a-z0-9]+$//')
# hashes of every file PyPI has for each pinned version (wheels for any platform, and the sdist)
"$tmp/venv/bin/uv" pip compile "$tmp/frozen.txt" --no-deps --generate-hashes --no-header --no-annotate \
  --python-version 3.11 -o "$tmp/hashed.txt" -q
{
  echo "# Frozen by infra/lock.sh from pyproject.toml; installed by infra/setup.sh with --require-hashes."
  echo "# torch: the machine's own CPU or CUDA build of this version, installed first, without a hash."
  echo "$torch"
  cat "$tmp/hashed.txt"
} > requirements.lock
echo "wrote requirements.lock ($(grep -c '==' requirements.lock) packages)"
