"""align_data's task families: each makes a prompt with one right answer, its checker
accepts that answer and refuses the plausible wrong one made for preference pairs."""

from __future__ import annotations

import random

import pytest

from stages.align_data.tasks import FAMILIES, Example, majority_baseline

SENTENCES = [
    ("en", "The kernel passes unknown parameters on to init."),
    ("en", "Most options can be changed later through sysfs."),
    ("de", "Die meisten Optionen lassen sich später noch ändern."),
    ("ru", "Большинство параметров можно изменить позже."),
    ("fr", "La plupart des options peuvent être modifiées plus tard."),
]
# families that need a human label besides the sentence: (sentence, label)
LABELLED = {
    "question_type": [("Where is the Eiffel Tower?", "LOC"), ("Who wrote Hamlet?", "HUM"),
                      ("How many feet are in a mile?", "NUM"), ("What does NASA stand for?", "ABBR")],
    "sentiment": [("What a lovely day.\nThis is awful.", "A"), ("I hate waiting.\nGreat news, we won!", "B"),
                  ("Best film of the year.\nIt was fine.", "A")],
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_checker_accepts_the_answer_and_refuses_the_rejected_one(name):
    family = FAMILIES[name]
    rng = random.Random(0)
    made = 0
    cases = [(lang, s, None) for lang, s in SENTENCES]
    cases += [("en", s, label) for s, label in LABELLED.get(name, [])]
    for i, (lang, sentence, label) in enumerate(cases):
        example = family.make(sentence, f"s{i}", rng, lang, label)
        if example is None:
            continue
        made += 1
        assert example.family == name and example.source_id == f"s{i}"
        assert family.check(example, example.answer)
        assert family.check(example, "  " + example.answer + "\n")  # whitespace is not an error
        wrong = family.reject(example, rng)
        assert wrong != example.answer and not family.check(example, wrong), (example, wrong)
        assert not family.check(example, "")
    assert made >= 3


def test_known_answers():
    rng = random.Random(1)
    s = "Most options can be changed later."
    assert FAMILIES["reverse_words"].make(s, "a", rng).answer == "later. changed be can options Most"
    assert FAMILIES["count_words"].make(s, "a", rng).answer == "6"
    assert FAMILIES["count_words"].check(FAMILIES["count_words"].make(s, "a", rng), "There are 6 words.")
    assert FAMILIES["uppercase"].make(s, "a", rng).answer == "MOST OPTIONS CAN BE CHANGED LATER."
    for seed in range(6):  # first, second or third word, named in a sentence that ends with a copy of it
        nth = FAMILIES["nth_word"].make(s, "a", random.Random(seed))
        ordinal = nth.prompt.split()[3]
        word = s.rstrip(".").split()[["first", "second", "third"].index(ordinal)]
        assert nth.answer == f"The {ordinal} word is {word}"
        assert FAMILIES["nth_word"].check(nth, word.lower() + ".")  # case, punctuation and wording are not the task
        assert not FAMILIES["nth_word"].check(nth, f"The {ordinal} word is later")
    lang = FAMILIES["language"].make(SENTENCES[2][1], "b", rng, "de")
    assert lang.answer == "German" and FAMILIES["language"].check(lang, "German.")
    assert FAMILIES["language"].make("Too short here", "c", rng, "en") is None
    q = FAMILIES["question_type"].make("Where is Paris?", "q", rng, label="LOC")
    assert q.answer == "location" and FAMILIES["question_type"].check(q, "Location.")
    assert FAMILIES["question_type"].make("Where is Paris?", "q", rng) is None  # no label, no example
    pair = FAMILIES["sentiment"].make("Awful.\nWonderful!", "p", rng, label="B")
    assert pair.prompt.endswith("A: Awful.\nB: Wonderful!") and FAMILIES["sentiment"].check(pair, "b")


def test_majority_baseline_is_the_constant_answer_pass_rate():
    examples = [Example("language", "p", "English", "a"), Example("language", "p", "English", "b"),
                Example("language", "p", "German", "c"), Example("count_words", "p", "5", "d"),
                Example("count_words", "p", "6", "e")]
    assert majority_baseline(examples) == {"count_words": 0.5, "language": pytest.approx(2 / 3)}
