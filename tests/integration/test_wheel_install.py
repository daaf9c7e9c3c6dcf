"""lmforge installed from its wheel, not from this checkout: the stages run (ingest, then quality on
ingest's output), the cache key's environment part comes from the installed distributions, and
language ID needs no package beyond lmforge's own dependencies."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import DATA_DIR, REPO, last_json, real_documents

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> Path:
    """A fresh venv holding lmforge's wheel. Its dependencies are this environment's, reached through a .pth
    line (installing 200 packages again would only test pip); a path added that way is not scanned for .pth
    files, so this checkout's editable install is not seen."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"  # a copy: a build leaves build/ and *.egg-info behind
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".venv", ".lmforge", ".git", "test-artifacts", "build",
                                                                "*.egg-info", "__pycache__", ".pytest_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(work / "dist"), str(source)], check=True, timeout=600, cwd=work)
    wheel, = (work / "dist").glob("lmforge-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "lmforge-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet",
                    "--no-deps", str(wheel)], check=True, timeout=300)
    return venv


def test_a_wheel_install_runs_ingest_then_quality(wheel_venv, tmp_path):
    env = {**os.environ, "LMFORGE_HOME": str(tmp_path / "home"), "LMFORGE_DATA_DIR": str(DATA_DIR),
           "PYTHONPATH": ""}
    python = wheel_venv / "bin" / "python"
    where = subprocess.run([python, "-c", "import stages, pipelines; print(stages.__file__, pipelines.__file__)"],
                           capture_output=True, text=True, check=True, env=env, cwd=tmp_path).stdout
    assert str(REPO) not in where and str(wheel_venv) in where  # the wheel's code, not this checkout's

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    docs = real_documents(["debian-handbook", "python-doc-rst"], 20)
    (corpus / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    lmforge = [str(wheel_venv / "bin" / "lmforge")]

    def stage(*args: str) -> dict:
        proc = subprocess.run([*lmforge, "stage", *args], capture_output=True, text=True, env=env, cwd=tmp_path,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return last_json(proc.stdout)

    ingest = stage("ingest", "--input", str(corpus), "--output", str(tmp_path / "ingest"))
    assert ingest["counts"]["kept"] == len(docs)
    quality = stage("quality", "--input", ingest["outputs"]["docs"], "--output", str(tmp_path / "quality"))
    counts = quality["counts"]
    assert counts["in"] == len(docs) and counts["kept"] + counts["removed"] + counts["quarantined"] == len(docs)
    manifest = json.loads((tmp_path / "quality" / "manifest.json").read_text())
    assert manifest["inputs"]["langid_model"]["path"].endswith("lid.176.ftz")
    kept = [json.loads(line) for line in (tmp_path / "quality" / "kept.jsonl").read_text().splitlines()]
    python_docs = [d["lang"] for d in kept if d["source"] == "python-doc-rst"]
    assert python_docs and python_docs.count("en") >= 0.8 * len(python_docs)  # language ID ran, and is right

    from stages.core.environment import environment_hash

    # the same dependencies as this environment, found from the installed distributions: the same hash
    assert manifest["environment_hash"] == environment_hash()
