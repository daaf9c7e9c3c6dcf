"""quality's core functions on small real inputs: PII, language ID, each heuristic,
classifier labels/evaluation, and the per-document decision."""

from __future__ import annotations

import numpy as np
import pytest

from stages.quality import classifier as clf
from stages.quality.config import ClassifierConfig, LabelRule, QualityConfig
from stages.quality.core import process
from stages.quality.heuristics import FILTERS, TextView
from stages.quality.langid import detect
from stages.quality.pii import EMAIL_PLACEHOLDER, IP_PLACEHOLDER, mask_pii

PROSE = (
    "The kernel's command-line parameters are given as a space-separated list of strings. Most of them "
    "configure drivers or subsystems at boot time, and the ones that a module does not recognize are passed "
    "on to init. Some options may also be changed later through sysfs, but only where the driver says so. "
    "This document lists the parameters that the generic code understands, grouped by subsystem, with the "
    "values each accepts and what happens when a value is out of range or missing altogether."
)


def measure(name: str, text: str) -> float:
    return FILTERS[name].measure(TextView(text))


def test_pii_masks_emails_and_public_ips_only():
    text = "Mail linus@kernel.org or bob.smith@example.co.uk; server 8.8.8.8, router 192.168.1.1, v1.2.3.4.5"
    masked, emails, ips = mask_pii(text)
    assert emails == 2 and ips == 1
    assert "linus@kernel.org" not in masked and masked.count(EMAIL_PLACEHOLDER) == 2
    assert IP_PLACEHOLDER in masked and "192.168.1.1" in masked and "1.2.3.4.5" in masked


def test_language_id_on_real_sentences():
    results = detect([PROSE, "Das ist ein kurzer deutscher Satz über das Wetter in Berlin.",
                      "Это короткое предложение на русском языке.", "这是一个关于天气的中文句子。"])
    assert [lang for lang, _ in results] == ["en", "de", "ru", "zh"]
    assert all(0.5 < score <= 1.0 for _, score in results)


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("min_words", "one two three", 3),
        ("min_mean_word_length", "aaa bbbbb", 4.0),
        ("symbol_word_ratio", "# a # b c d", 2 / 6),
        ("bullet_lines", "- a\n- b\nc\nd", 0.5),
        ("ellipsis_lines", "wait...\nok\nand then…\nend", 0.5),
        ("alpha_words", "abc 123 def 456", 0.5),
        ("stop_words", "the cat and the hat", 3),
        ("dup_lines", "a line\nb line\na line\na line", 0.5),
        ("dup_paragraphs", "p one\n\np two\n\np one", 1 / 3),
        ("dup_line_chars", "aaaa\nbb\naaaa", 4 / 10),
        ("top_2gram_chars", "a b a b a b c", 6 / 7),
        ("dup_5gram_chars", "a b c d e a b c d e", 1.0),
        ("lorem_ipsum", "Lorem ipsum dolor sit amet", 1.0),
        ("javascript_lines", "enable JavaScript to view\nok", 0.5),
        ("curly_brace", "int main() { return 0; }", 1.0),
        ("terminal_punctuation_lines", "A sentence.\nno end\nAnother one!", 2 / 3),
    ],
)
def test_each_heuristic_measure(name, text, expected):
    assert measure(name, text) == pytest.approx(expected)


def test_filters_use_published_defaults_and_directions():
    assert FILTERS["min_words"].default == 50 and FILTERS["max_words"].default == 100_000
    assert FILTERS["dup_10gram_chars"].default == 0.10 and FILTERS["top_2gram_chars"].default == 0.20
    assert FILTERS["min_words"].passes(50, 50) and not FILTERS["min_words"].passes(49, 50)
    assert FILTERS["dup_lines"].passes(0.3, 0.3) and not FILTERS["dup_lines"].passes(0.31, 0.3)


def test_process_tags_filters_and_records_the_first_failure():
    docs = [
        {"id": "good", "text": PROSE + " Contact me at someone@lists.example.org for details.", "source": "s"},
        {"id": "short", "text": "Too short to be a document.", "source": "s"},
        {"id": "zh", "text": "这是一个关于天气的中文句子。" * 3, "source": "s"},
    ]
    kept, removed, stats = process(docs, QualityConfig())
    assert [d["id"] for d in kept] == ["good", "zh"]  # word-based filters are skipped for Chinese
    assert EMAIL_PLACEHOLDER in kept[0]["text"] and stats.pii["s.emails"] == 1
    by_id = {d["id"]: d for d in removed}
    assert by_id["short"]["filter"] == "min_words" and by_id["short"]["value"] == 6
    assert kept[1]["lang"] == "zh"
    assert all({"lang", "lang_score", "quality_score"} <= set(d) for d in kept + removed)
    assert stats.docs_in["language"] == 3 and stats.removed["min_words"] == 1

    _, removed, _ = process([dict(docs[0])], QualityConfig(languages=["de"]))
    assert removed[0]["filter"] == "language" and removed[0]["value"] == "en"


def test_label_rules_split_by_file_and_evaluation():
    rules = [LabelRule(source="a", label="hq", split="file"), LabelRule(source="b", path="ABI/**", label="lq",
                                                                        split="test")]
    splits = {clf.label_of({"source": "a", "path": f"f{i}.html"}, rules)[1] for i in range(50)}
    assert splits == {"train", "test"}
    assert clf.label_of({"source": "a", "path": "x"}, rules) == clf.label_of({"source": "a", "path": "x"}, rules)
    assert clf.label_of({"source": "b", "path": "ABI/testing/x"}, rules) == ("lq", "test")
    assert clf.label_of({"source": "b", "path": "process/x.rst"}, rules) is None
    perfect = clf.evaluate(np.array([1, 1, 0, 0]), np.array([0.9, 0.8, 0.2, 0.1]))
    assert perfect["auc"] == 1.0 and perfect["precision"] == 1.0 and perfect["recall"] == 1.0
    assert clf.evaluate(np.array([1, 0]), np.array([0.5, 0.5]))["auc"] == 0.5


def test_classifier_training_is_deterministic(tmp_path):
    from tests.conftest import real_documents

    docs = real_documents(["python-doc", "linux-doc"], 40)
    examples = []
    for d in docs:
        label = "lq" if d["source"] == "linux-doc" and d["path"].startswith(("ABI/", "devicetree")) else "hq"
        examples.append((label, clf.as_line(d["text"], 2000)))
    cfg = ClassifierConfig(epoch=3, quantize=False)  # (quantizing 200k buckets takes a minute)
    first, second = clf.train(examples, cfg, tmp_path), clf.train(examples, cfg, tmp_path)
    lines = [line for _, line in examples[:30]]
    assert np.array_equal(clf.scores(first, lines), clf.scores(second, lines))
    assert np.all((clf.scores(first, lines) >= 0) & (clf.scores(first, lines) <= 1))
