"""A near-duplicate benchmark built from the real corpus, ground truth by construction.

Base documents are real passages (>= 200 words) from the kernel docs, the Python docs'
reST sources, Project Gutenberg texts, the Wikipedia excerpt and the English Debian
handbook, screened so that no two bases are alike. Then, with a fixed seed:

- planted copies, one per base, >= 200 per edit type: case, whitespace, punctuation,
  1% / 2% / 3% word edits (insert, delete or substitute), a boilerplate line added,
  a boilerplate line dropped;
- hard negatives, >= 200 pairs per kind: two different bodies wrapped in the same
  site-wide header and footer (real page chrome strings), and two documents sharing
  only their first half.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

import numpy as np

EDIT_TYPES = ("case", "whitespace", "punctuation", "words_1pct", "words_2pct", "words_3pct",
              "boilerplate_added", "boilerplate_dropped")
NEGATIVE_KINDS = ("shared_header_footer", "shared_first_half")

# Real page chrome, as it appears in the corpus' HTML (Python docs, Debian handbook, kernel docs).
SITES = [
    (["Python 3.11.2 Documentation » The Python Standard Library »",
      "Navigation: index | modules | next | previous | Python » 3.11.2 Documentation",
      "This Page: Report a Bug | Show Source"],
     ["© Copyright 2001-2023, Python Software Foundation. This page is licensed under the Python Software "
      "Foundation License Version 2.",
      "Examples, recipes, and other code in the documentation are additionally licensed under the Zero Clause "
      "BSD License. See History and License for more information."]),
    (["The Debian Administrator's Handbook — Raphaël Hertzog and Roland Mas",
      "Prev | Next | Table of Contents | Index",
      "Debian Buster from Discovery to Mastery"],
     ["This book is licensed under GPL-2+ or CC-BY-SA-3.0; see the Legal Notice for the details.",
      "Found a mistake? Report it on the debian-handbook mailing list or on the Debian bug tracker."]),
    (["The Linux Kernel documentation — 6.1.0 — Quick search",
      "Contents: Development process | Submitting patches | Code of conduct | Maintainer handbook",
      "This Page: Show Source | Search the kernel documentation"],
     ["©The kernel development community. Powered by Sphinx 5.3.0 & Alabaster 0.7.12.",
      "Page source: licensed under the GNU General Public License version 2, see COPYING for details."]),
    (["Django documentation — Django 4.2 release notes and how-to guides",
      "Home | Documentation | News | Community | Code | Issues | About | Donate",
      "Getting Help: FAQ | Index | Module Index | Table of Contents"],
     ["Django is a registered trademark of the Django Software Foundation. Hosting by In-kind donors.",
      "© 2005-2023 Django Software Foundation and individual contributors. Django is a registered trademark."]),
]
BOILERPLATE_LINES = [line for header, footer in SITES for line in header + footer]


@dataclass
class Benchmark:
    docs: list[dict] = field(default_factory=list)
    positives: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # edit type -> (orig, copy)
    negatives: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    group_of: dict[int, str] = field(default_factory=dict)

    def add(self, text: str, group: str, source: str) -> int:
        index = len(self.docs)
        self.docs.append({"id": f"b{index:06d}", "text": text, "source": source})
        self.group_of[index] = group
        return index


def _passages(text: str, rng: random.Random, low: int = 220, high: int = 520) -> list[str]:
    """Paragraph-aligned passages of low..high words."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    out, current, words = [], [], 0
    for para in paragraphs:
        current.append(para)
        words += len(para.split())
        if words >= low:
            if words <= high:
                out.append("\n\n".join(current))
            current, words = [], 0
    return out


def real_passages(seed: int) -> list[tuple[str, str]]:
    """(source, text) of real passages of >= 200 words from the fetched corpus, shuffled."""
    from stages.core.paths import raw_data_dir
    from stages.ingest.config import IngestConfig
    from stages.ingest.extract import extract
    from stages.ingest.plan import plan_files

    rng = random.Random(seed)
    config = IngestConfig(sources=["linux-doc", "python-doc-rst", "gutenberg", "wikipedia-en", "debian-handbook"],
                          data_dir=str(raw_data_dir().parent))
    candidates: list[tuple[str, str]] = []
    for task in plan_files(config, seed):
        if task.source == "debian-handbook" and not task.relpath.startswith("en-US/"):
            continue
        with open(task.url, "rb") as handle:
            data = handle.read()
        for doc in extract(task, data, 10**8):
            if isinstance(doc, dict):
                candidates += [(task.source, p) for p in _passages(doc["text"], rng)]
    rng.shuffle(candidates)
    return candidates


def load_bases(count: int, seed: int) -> list[tuple[str, str]]:
    """(source, text) of ``count`` real passages of >= 200 words, mutually dissimilar."""
    from stages.dedup.config import DedupConfig
    from stages.dedup.core import dedup_documents

    candidates = real_passages(seed)[: int(count * 1.6)]
    # screen: drop every passage that is anywhere near another (loose LSH, verified at 0.2)
    loose = DedupConfig(threshold=0.2, shingle_size=3, boilerplate=False, bands=32, rows=4)
    decisions = dedup_documents([{"id": str(i), "text": t} for i, (_, t) in enumerate(candidates)], loose)
    sizes = np.bincount(decisions.cluster, minlength=len(candidates))
    alone = [c for i, c in enumerate(candidates) if sizes[decisions.cluster[i]] == 1 and decisions.status[i] == 0]
    if len(alone) < count:
        raise SystemExit(f"only {len(alone)} dissimilar passages, need {count}")
    return alone[:count]


def _edit_words(text: str, fraction: float, rng: random.Random, vocab: list[str]) -> str:
    tokens = re.split(r"(\s+)", text)
    word_slots = [i for i, t in enumerate(tokens) if t and not t.isspace()]
    edits = max(1, round(fraction * len(word_slots)))
    for slot in rng.sample(word_slots, edits):
        op = rng.choice(("insert", "delete", "substitute"))
        if op == "insert":
            tokens[slot] = tokens[slot] + " " + rng.choice(vocab)
        elif op == "delete":
            tokens[slot] = ""
        else:
            tokens[slot] = rng.choice(vocab)
    return "".join(tokens)


def _case(text: str, rng: random.Random) -> str:
    mode = rng.choice(("lower", "upper", "flip"))
    if mode == "lower":
        return text.lower()
    if mode == "upper":
        return text.upper()
    return re.sub(r"\S+", lambda m: m.group(0).swapcase() if rng.random() < 0.3 else m.group(0), text)


def _whitespace(text: str, rng: random.Random) -> str:
    text = re.sub(r"\n\s*\n", lambda m: rng.choice(("\n", "\n\n\n", " \n \n")), text)
    text = re.sub(r" ", lambda m: rng.choice((" ", "  ", "\t", " ")) if rng.random() < 0.3 else " ", text)
    return "  " + text + "\n\n   "


def _punctuation(text: str, rng: random.Random) -> str:
    def swap(m):
        r = rng.random()
        return "" if r < 0.4 else rng.choice((";", "!", " -", "...", ",")) if r < 0.7 else m.group(0)
    return re.sub(r"[.,;:!?\"'()]", swap, text)


def build(seed: int = 20261130, per_kind: int = 200) -> Benchmark:
    rng = random.Random(seed)
    n_pos = per_kind * len(EDIT_TYPES)
    bases = load_bases(n_pos + per_kind * 2 + per_kind * 3, seed)
    vocab = sorted({w for _, t in bases[:300] for w in t.split() if w.isalpha()})
    bench = Benchmark(positives={t: [] for t in EDIT_TYPES}, negatives={k: [] for k in NEGATIVE_KINDS})
    it = iter(bases)
    for edit in EDIT_TYPES:
        for _ in range(per_kind):
            source, text = next(it)
            original = text
            if edit == "case":
                copy = _case(text, rng)
            elif edit == "whitespace":
                copy = _whitespace(text, rng)
            elif edit == "punctuation":
                copy = _punctuation(text, rng)
            elif edit.startswith("words_"):
                copy = _edit_words(text, int(edit[6]) / 100, rng, vocab)
            elif edit == "boilerplate_added":
                line = rng.choice(BOILERPLATE_LINES)
                copy = f"{line}\n{text}" if rng.random() < 0.5 else f"{text}\n{line}"
            else:  # boilerplate_dropped: the original carries a site line, the copy does not
                line = rng.choice(BOILERPLATE_LINES)
                original = f"{line}\n{text}" if rng.random() < 0.5 else f"{text}\n{line}"
                copy = text
            a = bench.add(original, edit, source)
            b = bench.add(copy, edit, source)
            bench.positives[edit].append((a, b))
    # shared header and footer around different bodies: sites of ~100 pages each
    for k in range(per_kind):
        header, footer = SITES[k % len(SITES)]
        pair = []
        for _ in range(2):
            source, body = next(it)
            pair.append(bench.add("\n".join(header) + "\n\n" + body + "\n\n" + "\n".join(footer),
                                  "shared_header_footer", source))
        bench.negatives["shared_header_footer"].append(tuple(pair))
    # two documents sharing only their first half
    for _ in range(per_kind):
        (s1, t1), (_, t2), (_, t3) = next(it), next(it), next(it)
        words1 = t1.split(" ")
        half = " ".join(words1[: len(words1) // 2])
        tail2 = " ".join(t2.split(" ")[len(t2.split(' ')) // 2:])
        tail3 = " ".join(t3.split(" ")[len(t3.split(' ')) // 2:])
        a = bench.add(half + " " + tail2, "shared_first_half", s1)
        b = bench.add(half + " " + tail3, "shared_first_half", s1)
        bench.negatives["shared_first_half"].append((a, b))
    return bench
