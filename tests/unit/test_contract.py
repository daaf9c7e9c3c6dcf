"""The stage contract's building blocks: digests, cache key, atomic writes, manifest."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from stages.core.atomic import atomic_output_dir, atomic_write_text
from stages.core.codehash import code_hash, source_modules
from stages.core.contract import Stage, StageConfig, StageContext, StageResult
from stages.core.digests import combined_digest, sha256_file, tree_digests
from stages.core.errors import ConfigError, StageError
from stages.core.manifest import read_manifest
from stages.core.runner import cache_key, check_invariant, execute_stage, input_from_path


class EchoConfig(StageConfig):
    suffix: str = "!"


class EchoStage(Stage):
    """A tiny real stage: copies each line of its input with a suffix."""

    name = "echo"
    config_model = EchoConfig
    inputs = {"docs": "upstream:docs"}
    document_stage = True

    def run(self, ctx: StageContext) -> StageResult:
        lines = ctx.inputs["docs"].path.read_text().splitlines()
        (ctx.output_dir / "kept.txt").write_text("\n".join(line + ctx.config.suffix for line in lines))
        if ctx.config.suffix == "boom":
            raise RuntimeError("exploded half-way")
        return StageResult(counts={"in": len(lines), "kept": len(lines), "removed": 0, "quarantined": 0},
                           outputs={"docs": "kept.txt"})


def test_tree_digests_match_sha256_of_each_file(tmp_path):
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("beta")
    (tmp_path / ".hidden").write_text("ignored")
    digests = tree_digests(tmp_path)
    assert digests == {"a.txt": sha256_file(tmp_path / "a.txt"), "sub/b.txt": sha256_file(tmp_path / "sub" / "b.txt")}
    assert digests["a.txt"] == "8ed3f6ad685b959ead7022518e1af76cd816f8e8ec7ccdda1ed4018e8f2223f8"
    before = combined_digest(digests)
    (tmp_path / "sub" / "b.txt").write_text("beta2")
    assert combined_digest(tree_digests(tmp_path)) != before


def test_cache_key_changes_with_config_input_and_seed(tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("one\ntwo\n")
    stage = EchoStage()
    inputs = {"docs": input_from_path("docs", source)}
    base = cache_key(stage, EchoConfig(), 1, inputs)
    assert base == cache_key(stage, EchoConfig(), 1, {"docs": input_from_path("docs", source)})
    assert base != cache_key(stage, EchoConfig(suffix="?"), 1, inputs)
    assert base != cache_key(stage, EchoConfig(), 2, inputs)
    source.write_text("one\ntwo\nthree\n")
    assert base != cache_key(stage, EchoConfig(), 1, {"docs": input_from_path("docs", source)})


def test_code_hash_follows_the_stage_imports_only():
    modules = {name for name, _ in source_modules("stages.ingest.stage")}
    assert {"stages.ingest.stage", "stages.ingest.extract", "stages.ingest.plan", "stages.core.docio",
            "stages.core.runner"} <= modules
    assert not any(m.startswith("pipelines") for m in modules)
    assert code_hash("stages.ingest.stage") != code_hash("stages.core.docio")
    # a stage whose work is imported when it runs still hashes that work
    assert {"stages.dedup.passes", "stages.dedup.minhash"} <= {name for name, _ in source_modules("stages.dedup.stage")}


def test_atomic_output_dir_keeps_previous_result_when_writer_fails(tmp_path):
    final = tmp_path / "out"
    with atomic_output_dir(final) as tmp:
        (tmp / "result.txt").write_text("good")
    with pytest.raises(RuntimeError):
        with atomic_output_dir(final) as tmp:
            (tmp / "result.txt").write_text("half")
            raise RuntimeError("killed")
    assert (final / "result.txt").read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp dir left behind


def test_atomic_write_text_replaces_whole_file_with_the_mode_of_its_siblings(tmp_path):
    path = tmp_path / "m.json"
    atomic_write_text(path, "first")
    atomic_write_text(path, "second")
    assert path.read_text() == "second"
    assert len(list(tmp_path.iterdir())) == 1
    sibling = tmp_path / "kept.jsonl"
    sibling.write_text("x")
    assert path.stat().st_mode & 0o777 == sibling.stat().st_mode & 0o777  # not mkstemp's 0600


def test_a_killed_writers_temp_dir_is_found_and_removed_by_the_next_write(tmp_path, monkeypatch):
    """A process SIGKILLed inside ``atomic_output_dir`` leaves its temp dir; the registry (what gc reads) and
    the next write into the same folder both see that its owner is gone, and a live writer's is left alone."""
    import subprocess
    import sys

    from stages.core.atomic import registered_stale_temps, stale_temps

    monkeypatch.setenv("LMFORGE_HOME", str(tmp_path / "home"))
    final = tmp_path / "out"
    code = ("import os, signal, sys; from pathlib import Path; from stages.core.atomic import atomic_output_dir\n"
            "with atomic_output_dir(Path(sys.argv[1])) as tmp:\n"
            "    (tmp / '_work').mkdir(); (tmp / '_work' / 'shard').write_text('x' * 1000)\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    died = subprocess.run([sys.executable, "-c", code, str(final)], env={**os.environ}, cwd=Path(__file__).parents[2])
    assert died.returncode == -9
    [left] = [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp-") and p.is_dir()]
    assert (left / "_work" / "shard").exists()
    assert stale_temps(tmp_path) == [left] and registered_stale_temps() == [left]
    with atomic_output_dir(final) as tmp:
        assert stale_temps(tmp_path) == []  # our own temp dir is live, not stale
        (tmp / "result.txt").write_text("good")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "out"]
    assert registered_stale_temps() == [] and not list((tmp_path / "home" / "run" / "partial").iterdir())


def test_execute_stage_writes_manifest_with_digests_counts_and_environment(tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("one\ntwo\n")
    out = tmp_path / "out"
    run = execute_stage(EchoStage(), EchoConfig(), {"docs": input_from_path("docs", source, run_id="r0")}, out, seed=7)
    manifest = read_manifest(out)
    assert (out / "kept.txt").read_text() == "one!\ntwo!"
    assert manifest["outputs"] == {"kept.txt": sha256_file(out / "kept.txt")}
    assert manifest["counts"] == {"in": 2, "kept": 2, "removed": 0, "quarantined": 0}
    assert manifest["upstream_run_ids"] == ["r0"]
    assert manifest["seed"] == 7 and manifest["cache_key"] == run.manifest["cache_key"]
    assert manifest["config"] == {"suffix": "!"}
    assert len(manifest["environment_hash"]) == 64
    assert manifest["versions"]["python"].startswith("3.11")
    assert manifest["hardware"]["cpu_cores"] >= 1
    json.dumps(manifest)


def test_failed_stage_leaves_no_artifact(tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("x\n")
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="exploded"):
        execute_stage(EchoStage(), EchoConfig(suffix="boom"), {"docs": input_from_path("docs", source)}, out)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["in.txt"]


def test_invariant_violation_is_an_error():
    check_invariant("s", {"in": 3, "kept": 1, "removed": 1, "quarantined": 1})
    with pytest.raises(StageError, match="invariant"):
        check_invariant("s", {"in": 3, "kept": 1, "removed": 1, "quarantined": 0})


def test_missing_input_names_the_path_and_is_a_bad_argument(tmp_path):
    with pytest.raises(ConfigError, match="does not exist") as raised:
        input_from_path("docs", tmp_path / "nope.jsonl")
    assert raised.value.exit_code == 2


def test_stage_input_digest_uses_upstream_manifest(tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("a\n")
    out = tmp_path / "out"
    execute_stage(EchoStage(), EchoConfig(), {"docs": input_from_path("docs", source)}, out)
    first = input_from_path("up", out).digest
    (out / "extra-untracked.txt").write_text("not in the manifest")
    assert input_from_path("up", out).digest == first  # what the manifest does not list is not the output
    assert Path(input_from_path("up", out).path) == out.resolve()
    source.write_text("b\n")  # a different upstream output: a different digest, so a new cache key downstream
    execute_stage(EchoStage(), EchoConfig(), {"docs": input_from_path("docs", source)}, out)
    assert input_from_path("up", out).digest != first
