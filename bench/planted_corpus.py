"""A corpus of any size with known near-duplicate clusters, made from a real one.

Each variant k of a base document maps every word through a keyed hash to a made-up word, so
variants share no shingles with each other or with the base, while a variant keeps its base's
length, line structure and word statistics (so dedup does the same work per document as on the
real corpus). One original in ten gets planted copies (clusters of 2, 3, 4, 6 or 10), each copy
dropping a different 4 % of the words; a copy is planted only if its exact shingle Jaccard with the
original (dedup's own shingles) is at least 0.7, so every planted copy is a near duplicate at
dedup's 0.6 threshold with a margin. Start from a deduplicated corpus (dedup's kept output), so
the planted clusters are nearly the only duplicates to find.

    .venv/bin/python bench/planted_corpus.py --base DEDUP_OUT/kept.jsonl --docs 250000 --out corpus.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.core.docio import read_documents
from stages.dedup.cluster import jaccard
from stages.dedup.minhash import ShingleHasher, text_shingles

WORD = re.compile(r"\w+")
LETTERS = "bcdfghjklmnprstvwz"
VOWELS = "aeiou"
CLUSTER_SIZES = (2, 3, 4, 6, 10)
PLANT_EVERY = 10
MIN_WORDS = 75
MIN_JACCARD = 0.7


def made_up_word(variant: int, word: str) -> str:
    value = int.from_bytes(hashlib.blake2b(f"{variant}\0{word}".encode(), digest_size=8).digest(), "little")
    syllables = 2 + value % 3
    value //= 3
    out = []
    for _ in range(syllables):
        out.append(LETTERS[value % len(LETTERS)] + VOWELS[(value // len(LETTERS)) % len(VOWELS)])
        value //= len(LETTERS) * len(VOWELS)
    return "".join(out)


def copy_of(text: str, copy: int) -> str:
    """The original without every 25th word, starting at a different word for each copy."""
    words = text.split(" ")
    return " ".join(w for j, w in enumerate(words) if (j + 3 * copy) % 25 != 0)


def planted(base: Path, docs: int) -> Iterator[tuple[dict, str | None]]:
    """(document, the id of the original it copies or None), until ``docs`` documents."""
    made = originals = 0
    variant = 0
    hasher = ShingleHasher("word", 3)
    while made < docs:
        table: dict[str, str] = {}

        def rewrite(match: re.Match, table: dict[str, str] = table, variant: int = variant) -> str:
            word = match.group(0)
            if word not in table:
                table[word] = made_up_word(variant, word)
            return table[word]

        for doc in read_documents(base):
            if not isinstance(doc, dict):
                continue
            text = WORD.sub(rewrite, doc["text"])
            original = {"id": f"{doc['id']}~{variant}", "text": text, "source": doc.get("source")}
            yield original, None
            made += 1
            if made >= docs:
                return
            if len(text.split(" ")) >= MIN_WORDS and originals % PLANT_EVERY == 0:
                size = CLUSTER_SIZES[(originals // PLANT_EVERY) % len(CLUSTER_SIZES)]
                shingles = text_shingles(text, hasher)
                for c in range(1, size):
                    copy = copy_of(text, c)
                    if jaccard(shingles, text_shingles(copy, hasher)) < MIN_JACCARD:
                        continue
                    yield {**original, "id": f"{original['id']}~copy{c}", "text": copy}, original["id"]
                    made += 1
                    if made >= docs:
                        return
            originals += 1
        variant += 1


def write(base: Path, docs: int, out: Path) -> dict[str, str]:
    """Write the corpus; returns {copy id: original id}."""
    truth: dict[str, str] = {}
    with open(out, "w", encoding="utf-8") as handle:
        for doc, original in planted(base, docs):
            handle.write(json.dumps(doc, ensure_ascii=False) + "\n")
            if original is not None:
                truth[doc["id"]] = original
    return truth


def planted_truth(corpus: Path) -> dict[str, str]:
    """{copy id: original id} of a corpus this module wrote, read back from its ids."""
    truth: dict[str, str] = {}
    with open(corpus, encoding="utf-8") as handle:
        for line in handle:
            doc_id = json.loads(line)["id"]
            if "~copy" in doc_id:
                truth[doc_id] = doc_id.rsplit("~copy", 1)[0]
    return truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, required=True, help="a deduplicated corpus (JSONL file or folder)")
    parser.add_argument("--docs", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    truth = write(args.base, args.docs, args.out)
    print(json.dumps({"docs": args.docs, "planted_copies": len(truth)}))


if __name__ == "__main__":
    main()
