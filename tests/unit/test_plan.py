"""ingest's file plan: budgets, seeded selection, user paths, and the input digest."""

from __future__ import annotations

import pytest

from stages.core.errors import StageError
from stages.ingest.config import IngestConfig
from stages.ingest.plan import expand_path, plan_digest, plan_files
from stages.ingest.stage import batch_tasks
from tests.conftest import DATA_DIR, require_corpus


@pytest.fixture(autouse=True)
def corpus():
    require_corpus()


def test_budget_caps_each_source_and_selection_is_seeded():
    config = IngestConfig(sources=["linux-doc", "fortunes-en"], max_mb_per_source=0.3, data_dir=str(DATA_DIR))
    first = plan_files(config, seed=1)
    assert first == plan_files(config, seed=1)
    assert first != plan_files(config, seed=2)
    for source in ("linux-doc", "fortunes-en"):
        files = [t for t in first if t.source == source]
        assert files and sum(t.size for t in files[:-1]) <= 0.3e6


def test_file_cap():
    config = IngestConfig(sources=["python-doc"], max_files_per_source=3, data_dir=str(DATA_DIR))
    assert len(plan_files(config, seed=0)) == 3


def test_missing_demo_source_points_at_fetch_and_user_paths(tmp_path):
    config = IngestConfig(sources=["gutenberg"], data_dir=str(tmp_path))
    with pytest.raises(StageError, match="fetch_data.sh.*ingest.paths"):
        plan_files(config, seed=0)


def test_user_paths_expand_dirs_and_globs(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "sub" / "b.jsonl").write_text('{"text": "b"}\n')
    (tmp_path / ".hidden").write_text("h")
    assert [rel for _, rel, _, _ in expand_path(str(tmp_path))] == ["a.txt", "sub/b.jsonl"]
    assert [rel for _, rel, _, _ in expand_path(str(tmp_path / "**" / "*.jsonl"))] == ["b.jsonl"]
    with pytest.raises(StageError, match="matches no files"):
        expand_path(str(tmp_path / "*.parquet"))


def test_plan_digest_changes_when_a_file_changes(tmp_path):
    (tmp_path / "a.txt").write_text("one")
    config = IngestConfig(sources=[], paths=[str(tmp_path)])
    before = plan_digest(plan_files(config, 0))
    assert before == plan_digest(plan_files(config, 0))
    (tmp_path / "a.txt").write_text("two")
    assert plan_digest(plan_files(config, 0)) != before


def test_batches_respect_the_size_budget():
    config = IngestConfig(sources=["linux-doc"], max_files_per_source=40, data_dir=str(DATA_DIR))
    tasks = plan_files(config, 0)
    batches = batch_tasks(tasks, task_mb=0.05)
    assert [t for b in batches for t in b] == tasks
    assert all(len(b) == 1 or sum(t.size for t in b) <= 0.05e6 for b in batches)


def test_fsspec_urls_are_listed_and_read():
    import fsspec

    from stages.ingest.stage import read_file

    fs = fsspec.filesystem("memory")
    fs.pipe("/corpus/a.jsonl", b'{"id": "m1", "text": "from memory"}\n')
    fs.pipe("/corpus/sub/b.txt", b"second file")
    listed = expand_path("memory://corpus")
    assert [(rel, size, error) for _, rel, size, error in listed] == [("a.jsonl", 36, None), ("sub/b.txt", 11, None)]
    url = listed[1][0]
    assert url.startswith("memory://")
    from stages.ingest.extract import FileTask

    assert read_file(FileTask("user", url, "sub/b.txt", "text", "x", None, 11), 100) == b"second file"
    config = IngestConfig(sources=[], paths=["memory://corpus"])
    assert plan_digest(plan_files(config, 0)) == plan_digest(plan_files(config, 0))
