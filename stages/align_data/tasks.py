"""Instruction task families whose answers a program can check.

Each family turns a real source sentence into a prompt and its one right answer, says
whether a model's response is right (``check``), and makes a plausible wrong answer for
preference pairs (``reject``: off by one, half done, the other language). Because every
answer is checkable, SFT, the reward model and PPO all get a ground-truth pass rate
beside their losses.
"""

from __future__ import annotations

import random
import re
import unicodedata
from dataclasses import dataclass

ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth"]
LANGUAGE_NAMES = {"en": "English", "de": "German", "fr": "French", "es": "Spanish", "it": "Italian",
                  "ru": "Russian", "pl": "Polish", "cs": "Czech", "pt": "Portuguese", "nl": "Dutch"}


@dataclass(frozen=True)
class Example:
    family: str
    prompt: str
    answer: str
    source_id: str  # the sentence it was made from: splits are by this, never by example


def words(sentence: str) -> list[str]:
    return sentence.split()


def _norm(text: str) -> str:
    """Comparison form: NFC, outer whitespace and one trailing full stop dropped, inner spaces collapsed."""
    text = unicodedata.normalize("NFC", text).strip()
    text = re.sub(r"\s+", " ", text)
    return text[:-1] if text.endswith(".") and not text.endswith("..") else text


def _strip(word: str) -> str:
    return word.strip().strip(".,;:!?\"'()[]«»“”‘’")


def _bare(word: str) -> str:
    return _strip(word).lower()


class Family:
    name: str
    labels: tuple[str, ...] = ()  # the closed answer set of a label family (language, question type)

    def make(self, sentence: str, source_id: str, rng: random.Random, lang: str = "en",
             label: str | None = None) -> Example | None:
        raise NotImplementedError

    def check(self, example: Example, response: str) -> bool:
        return _norm(response) == _norm(example.answer)

    def reject(self, example: Example, rng: random.Random) -> str:
        raise NotImplementedError


class ReverseWords(Family):
    name = "reverse_words"

    def make(self, sentence, source_id, rng, lang="en", label=None):
        w = words(sentence)
        if not 3 <= len(w) <= 12:
            return None
        return Example(self.name, f"Reverse the order of the words: {' '.join(w)}", " ".join(reversed(w)), source_id)

    def reject(self, example, rng):
        w = example.answer.split()
        half = len(w) // 2  # only half reversed: the other half left in the original order
        return " ".join(w[:half] + list(reversed(w[half:])))


class NthWord(Family):
    """Answered as a sentence ("The second word is cat") whose last word is a copy of the
    prompt's tokens: byte-level BPE gives " cat" (mid-sentence) and "cat" (answer start)
    different ids, and learning that mapping for every word is beyond a 1.9M-parameter
    model, while copying a token from a position is not."""

    name = "nth_word"

    def make(self, sentence, source_id, rng, lang="en", label=None):
        w = [x for x in words(sentence) if _bare(x)]
        if not 3 <= len(w) <= 12:
            return None
        k = rng.randrange(3)  # first, second or third
        return Example(self.name, f"What is the {ORDINALS[k]} word of: {' '.join(w)}",
                       self._say(k, _strip(w[k])), source_id)

    @staticmethod
    def _say(k: int, word: str) -> str:
        return f"The {ORDINALS[k]} word is {word}"

    @staticmethod
    def word_of(response: str) -> str:
        """The word a response names: its last word (case and punctuation are not the task)."""
        found = response.split()
        return _bare(found[-1]) if found else ""

    def check(self, example, response):
        return bool(self.word_of(response)) and self.word_of(response) == self.word_of(example.answer)

    def reject(self, example, rng):
        w = [_strip(x) for x in example.prompt.split(": ", 1)[1].split() if _bare(x)]
        k = ORDINALS.index(example.prompt.split()[3])
        right = self.word_of(example.answer)
        options = [w[i] for i in (k - 1, k + 1) if 0 <= i < len(w) and _bare(w[i]) != right]
        return self._say(k, rng.choice(options) if options else w[k] + "s")  # off by one


class CountWords(Family):
    name = "count_words"

    def make(self, sentence, source_id, rng, lang="en", label=None):
        w = words(sentence)
        if not 2 <= len(w) <= 15:
            return None
        return Example(self.name, f"How many words are in: {' '.join(w)}", str(len(w)), source_id)

    def check(self, example, response):
        found = re.search(r"-?\d+", response)
        return found is not None and found.group() == example.answer

    def reject(self, example, rng):
        return str(int(example.answer) + rng.choice([-1, 1]))


class Uppercase(Family):
    name = "uppercase"

    def make(self, sentence, source_id, rng, lang="en", label=None):
        w = words(sentence)
        if not 2 <= len(w) <= 12 or sentence.upper() == sentence:
            return None
        text = " ".join(w)
        return Example(self.name, f"Write in capital letters: {text}", text.upper(), source_id)

    def reject(self, example, rng):
        w = example.answer.split()
        half = max(1, len(w) // 2)
        return " ".join(w[:half] + [x.lower() for x in w[half:]])  # stops halfway


class Language(Family):
    name = "language"
    labels = tuple(LANGUAGE_NAMES.values())

    def make(self, sentence, source_id, rng, lang="en", label=None):
        if lang not in LANGUAGE_NAMES or not 4 <= len(words(sentence)) <= 30:
            return None
        return Example(self.name, f"Which language is this text in? {sentence}", LANGUAGE_NAMES[lang], source_id)

    def check(self, example, response):
        return _bare(response.split()[0]) == example.answer.lower() if response.split() else False

    def reject(self, example, rng):
        return rng.choice(sorted(n for n in LANGUAGE_NAMES.values() if n != example.answer))


QUESTION_TYPES = {"ABBR": "abbreviation", "DESC": "description", "ENTY": "entity", "HUM": "person",
                  "LOC": "location", "NUM": "number"}


class QuestionType(Family):
    """TREC's human labels: what kind of thing does the question ask for?"""

    name = "question_type"
    labels = tuple(QUESTION_TYPES.values())

    def make(self, sentence, source_id, rng, lang="en", label=None):
        if label not in QUESTION_TYPES:
            return None
        return Example(self.name, f"What type of answer does this question ask for? {sentence}",
                       QUESTION_TYPES[label], source_id)

    def check(self, example, response):
        return _bare(response.split()[0]) == example.answer if response.split() else False

    def reject(self, example, rng):
        return rng.choice(sorted(v for v in QUESTION_TYPES.values() if v != example.answer))


class Sentiment(Family):
    """Human sentiment ratings (VADER ground truth): which of two snippets reads more positive?

    ``make`` takes the two snippets joined by a newline and the rating gap's sign as label
    ("A" when the first is more positive)."""

    name = "sentiment"

    def make(self, sentence, source_id, rng, lang="en", label=None):
        first, _, second = sentence.partition("\n")
        if label not in ("A", "B") or not first or not second:
            return None
        return Example(self.name, f"Which text is more positive, A or B?\nA: {first}\nB: {second}", label, source_id)

    def check(self, example, response):
        return _bare(response.split()[0]).upper() == example.answer if response.split() else False

    def reject(self, example, rng):
        return "B" if example.answer == "A" else "A"


FAMILIES: dict[str, Family] = {f.name: f for f in (ReverseWords(), NthWord(), CountWords(), Uppercase(), Language(),
                                                   QuestionType(), Sentiment())}


def majority_baseline(examples: list[Example]) -> dict[str, float]:
    """Pass rate of always giving each family's most common answer: the bar a model must clear."""
    from collections import Counter

    out = {}
    for name in sorted({e.family for e in examples}):
        fam = [e for e in examples if e.family == name]
        common = Counter(e.answer for e in fam).most_common(1)[0][0]
        out[name] = sum(FAMILIES[name].check(e, common) for e in fam) / len(fam)
    return out
