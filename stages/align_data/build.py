"""From real sentences to instruction examples and preference pairs, split by sentence.

Every source sentence (or sentiment snippet, or QA pair) lands in train or held-out by a
seeded hash of its id, before any example is made, so no sentence is in both. Each
family draws its own seeded sample of its split's sentences.
"""

from __future__ import annotations

import functools
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from stages.align_data import sources
from stages.align_data.config import AlignDataConfig
from stages.align_data.tasks import FAMILIES, LANGUAGE_NAMES, Example
from stages.tokenize.mixture import unit_hash

SPLITS = ("train", "heldout")
QA = "qa"  # free-form question/answer pairs: trained on, scored by loss only


@dataclass
class Pools:
    """Every usable source item, by what it can feed."""

    english: list[sources.Sentence]
    by_language: dict[str, list[sources.Sentence]]
    trec: list[sources.Sentence]
    rated: list[sources.Rated]
    qa: list[sources.QAPair]
    broken: list[sources.Broken] = field(default_factory=list)


def load_pools(raw: Path, qa_limit: int) -> Pools:
    trec, broken = sources.trec_questions(raw)
    dialog, b = sources.movie_dialog(raw)
    broken += b
    rated, b = sources.sentiment_snippets(raw)
    broken += b
    chat_pairs, chat_sentences, b = sources.chatterbot(raw)
    broken += b
    fortunes, b = sources.fortune_sentences(raw)
    broken += b
    gcide = sources.gcide_definitions(raw, qa_limit)
    lines = [sources.Sentence(p.question, "movie_dialog", p.source_id + ".q") for p in dialog]
    english = trec + [s for s in lines if s.text[:1].isalpha()]
    by_language: dict[str, list[sources.Sentence]] = defaultdict(list)
    for s in chat_sentences + fortunes + english:
        by_language[s.lang].append(s)
    return Pools(english=english, by_language=dict(by_language), trec=trec, rated=rated,
                 qa=dialog + chat_pairs + gcide, broken=broken)


@functools.lru_cache(maxsize=None)
def split_of(seed: int, source_id: str, heldout_fraction: float) -> str:
    return "heldout" if unit_hash(seed, "align-split", source_id) < heldout_fraction else "train"


def _shuffled(items: list, seed: int, salt: str) -> list:
    out = list(items)
    random.Random(f"{seed}:{salt}").shuffle(out)
    return out


def family_examples(name: str, pools: Pools, split: str, want: int, cfg: AlignDataConfig,
                    seed: int) -> list[Example]:
    """Up to ``want`` examples of one family from the sentences of one split."""
    family = FAMILIES[name]
    rng = random.Random(f"{seed}:{name}:{split}")
    def mine(items):
        return [s for s in items if split_of(seed, s.source_id, cfg.heldout_fraction) == split]
    out: list[Example] = []
    if name == "language":  # round-robin over languages, so the majority answer is rare
        queues = {lang: _shuffled(mine(pool), seed, f"{name}:{lang}:{split}")
                  for lang, pool in sorted(pools.by_language.items()) if lang in LANGUAGE_NAMES}
        while len(out) < want and any(queues.values()):
            for lang, queue in queues.items():
                while queue and len(out) < want:
                    s = queue.pop()
                    example = family.make(s.text, s.source_id, rng, lang)
                    if example is not None:
                        out.append(example)
                        break
        return out
    if name == "sentiment":
        return sentiment_examples(pools.rated, split, want, cfg, seed)
    pool = pools.trec if name == "question_type" else pools.english
    for s in _shuffled(mine(pool), seed, f"{name}:{split}"):
        example = family.make(s.text, s.source_id, rng, s.lang, s.label)
        if example is not None:
            out.append(example)
            if len(out) >= want:
                break
    return out


def sentiment_examples(rated: list[sources.Rated], split: str, want: int, cfg: AlignDataConfig,
                       seed: int) -> list[Example]:
    """Pairs of snippets of the same split whose human ratings differ by more than the gap."""
    family = FAMILIES["sentiment"]
    rng = random.Random(f"{seed}:sentiment:{split}")
    items = _shuffled([r for r in rated if split_of(seed, r.source_id, cfg.heldout_fraction) == split
                       and 3 <= len(r.text.split()) <= 25], seed, f"sentiment:{split}")
    out = []
    for a, b in zip(items[0::2], items[1::2]):
        if abs(a.rating - b.rating) <= cfg.sentiment_min_gap:
            continue
        label = "A" if a.rating > b.rating else "B"
        example = family.make(f"{a.text}\n{b.text}", f"{a.source_id}+{b.source_id}", rng, label=label)
        if example is not None:
            out.append(example)
            if len(out) >= want:
                break
    return out


def qa_examples(pairs: list[sources.QAPair], split: str, want: int, cfg: AlignDataConfig, seed: int) -> list[Example]:
    """Real question/answer pairs, an equal share from each source where it has enough."""
    by_source: dict[str, list[sources.QAPair]] = defaultdict(list)
    for p in pairs:
        kind = p.source.split("-")[0]
        if split_of(seed, p.source_id, cfg.heldout_fraction) == split and len(p.answer.split()) <= 20 \
                and len(p.question.split()) <= 30:
            by_source[kind].append(p)
    out: list[Example] = []
    share = -(-want // max(1, len(by_source)))
    for kind in sorted(by_source):
        for p in _shuffled(by_source[kind], seed, f"qa:{kind}:{split}")[:share]:
            out.append(Example(QA, p.question, p.answer, p.source_id))
    return _shuffled(out, seed, f"qa:{split}")[:want]


def preference_pairs(examples: list[Example], seed: int, wrong_task_share: float = 0.0,
                     label_rejects: int = 1) -> list[tuple[Example, str]]:
    """(example, rejected answer): the checker accepts ``example.answer`` and refuses the other.

    Most rejected answers come from the family's own ``reject`` (off by one, half done,
    another language); a ``wrong_task_share`` of them is a right-looking answer to another
    family's task ("English" to a question-type prompt, "7" to a language prompt), so the
    reward model learns that an answer must fit the question, which PPO otherwise exploits.
    Examples of a label family get ``label_rejects`` pairs, each with another wrong label:
    with one, the reward model sees each label refused only now and then and learns
    per-label biases ("Spanish" for any Romance text) that PPO then exploits."""
    answers_by_family: dict[str, list[str]] = defaultdict(list)
    for example in examples:
        answers_by_family[example.family].append(example.answer)
    out = []
    for example in examples:
        family = FAMILIES[example.family]
        rng = random.Random(f"{seed}:reject:{example.source_id}:{example.family}")
        others = [f for f in sorted(answers_by_family) if f != example.family]
        if others and rng.random() < wrong_task_share:
            rejected = [rng.choice(answers_by_family[rng.choice(others)])]
        else:
            rejected = [family.reject(example, rng)]
        if family.labels and label_rejects > 1:
            wrong = [label for label in family.labels if label != example.answer and label not in rejected]
            rejected += rng.sample(wrong, min(len(wrong), label_rejects - 1))
        out += [(example, r) for r in rejected if family.check(example, example.answer) and not family.check(example, r)]
    return out


def source_texts(example: Example, pools_by_id: dict[str, str]) -> list[str]:
    """The source sentence(s) an example was made from: what decontamination checks."""
    return [pools_by_id[part] for part in example.source_id.split("+") if part in pools_by_id]
