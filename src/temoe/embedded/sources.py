"""Natural-text sources of the embedded corpus: Debian packages and the Python standard library, read offline.

Each source yields plain-text documents for one category (chat, code, stem, en, de, es, fr, it, ja).
Nothing is installed here: when a Debian package is missing, `load_documents` raises `MissingSourcesError`
with the `apt-get install` line to run, or (with `require_all=False`) warns and reads what is there.
"""

from __future__ import annotations

import gzip
import random
import re
import sysconfig
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

FORTUNES = Path("/usr/share/games/fortunes")
MAN = Path("/usr/share/man")
PYDOC_SOURCES = Path("/usr/share/doc/python3-doc/html/_sources")

# Debian package -> licence (from /usr/share/doc/<pkg>/copyright, checked November 2026).
PACKAGES: dict[str, str] = {
    "fortunes": "BSD (fortune files of the BSD fortune(6) port)",
    "fortunes-min": "BSD (fortune files of the BSD fortune(6) port)",
    "fortunes-de": "GPL-2+",
    "fortunes-es": "GPL-2+",
    "fortunes-it": "public domain (\"freeware (public domain)\" per its copyright file)",
    "manpages-de": "GPL-3+ (translations)",
    "manpages-fr": "GPL-3+ (translations)",
    "manpages-es": "GPL-3+ (translations)",
    "manpages-it": "GPL-3+ (translations)",
    "manpages-ja": "per page, the licence of the original man page (DFSG-free)",
    "python3-doc": "PSF-2.0",
}


@dataclass(frozen=True)
class Document:
    """One natural-text document with the category it stands for."""

    category: str
    source: str
    text: str


class MissingSourcesError(FileNotFoundError):
    """Debian packages the corpus reads natural text from are not installed."""


def missing_packages(packages: list[str] | None = None) -> list[str]:
    """The packages of `packages` (default: all of `PACKAGES`) not installed (no /usr/share/doc/PKG)."""
    return [p for p in (packages or list(PACKAGES)) if not Path(f"/usr/share/doc/{p}").exists()]


def install_hint(missing: list[str]) -> str:
    """The command a user runs to install `missing` (temoe never runs it)."""
    return f"sudo apt-get install --no-install-recommends {' '.join(missing)}"


def check_packages(require_all: bool = True) -> list[str]:
    """Raise `MissingSourcesError` naming the missing packages and the install command (or, with
    `require_all=False`, warn and return them: the corpus is then built from the installed sources)."""
    missing = missing_packages()
    if not missing:
        return []
    message = (f"the embedded corpus reads natural text from Debian packages that are not installed: "
               f"{', '.join(missing)}. Install them with:\n    {install_hint(missing)}")
    if require_all:
        raise MissingSourcesError(f"{message}\nor build from the installed sources only "
                                  "(`temoe pretrain --allow-missing-sources`; a different corpus).")
    warnings.warn(f"{message}\nBuilding the corpus from the installed sources only.", stacklevel=2)
    return missing


def _read_fortunes(directory: Path, limit_chars: int) -> list[str]:
    out: list[str] = []
    total = 0
    if not directory.is_dir():
        return out
    names = sorted({p.name.removesuffix(".u8") for p in directory.iterdir() if p.is_file()})
    for name in names:
        if name.endswith(".dat") or "art" in name or name.startswith("."):
            continue
        path = directory / f"{name}.u8" if (directory / f"{name}.u8").exists() else directory / name
        raw = path.read_bytes().decode("utf-8", errors="replace")
        if "\ufffd" in raw:
            continue
        for entry in raw.split("\n%\n"):
            entry = entry.strip().strip("%").strip()
            if 20 <= len(entry) <= 600:
                out.append(entry)
                total += len(entry)
        if total >= limit_chars:
            break
    return out


_ROFF_FONT = re.compile(r"\\f(\[[^\]]*\]|\(..|.)")
_ROFF_ESC = re.compile(r"\\(\(..|\*\(..|\*.|[&,/|^%])")


def _strip_roff(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if line.startswith(('.\\"', "'\\\"")):
            continue
        if line.startswith("."):
            # Keep the argument text of section/paragraph/font macros, drop the macro itself.
            parts = line.split(None, 1)
            if (
                parts[0] in (".SH", ".SS", ".B", ".I", ".BR", ".IR", ".RB", ".BI", ".IB", ".IP", ".TP")
                and len(parts) > 1
            ):
                line = parts[1].replace('"', "")
            else:
                continue
        line = _ROFF_FONT.sub("", line)
        line = _ROFF_ESC.sub("", line).replace("\\-", "-").replace("\\e", "\\").replace("\\ ", " ")
        lines.append(line)
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _read_man(lang: str, limit_chars: int) -> list[str]:
    out: list[str] = []
    total = 0
    root = MAN / lang
    if not root.is_dir():
        return out
    for path in sorted(root.glob("man[1-8]/*.gz")):
        try:
            text = _strip_roff(gzip.decompress(path.read_bytes()).decode("utf-8"))
        except (UnicodeDecodeError, OSError, EOFError):
            continue
        out.extend(_paragraph_chunks(text))
        total += len(text)
        if total >= limit_chars:
            break
    return out


def _paragraph_chunks(text: str, max_chars: int = 700, min_chars: int = 80) -> list[str]:
    """Split text into chunks of whole paragraphs, each at most max_chars (longer paragraphs are cut)."""
    chunks, cur = [], ""
    for para in re.split(r"\n\s*\n", text):
        para = para.strip()
        if not para:
            continue
        while len(para) > max_chars:
            cut = para.rfind("\n", 0, max_chars)
            cut = cut if cut > max_chars // 3 else max_chars
            chunks.append(para[:cut])
            para = para[cut:].strip()
        if len(cur) + len(para) + 2 > max_chars and cur:
            chunks.append(cur)
            cur = ""
        cur = f"{cur}\n\n{para}" if cur else para
    if cur:
        chunks.append(cur)
    return [c for c in chunks if len(c) >= min_chars]


def _read_stdlib_code(limit_chars: int) -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    out: list[str] = []
    total = 0
    for path in sorted(root.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        # Code chunks split on top-level definitions so each document is a coherent unit.
        for block in re.split(r"\n(?=(?:def|class|async def) )", text):
            block = block.strip()
            if 80 <= len(block):
                out.extend(_paragraph_chunks(block, max_chars=900))
        total += len(text)
        if total >= limit_chars:
            break
    return out


def _read_pydoc(limit_chars: int) -> list[str]:
    out: list[str] = []
    total = 0
    for sub in ("tutorial", "library", "reference", "howto", "faq"):
        for path in sorted((PYDOC_SOURCES / sub).glob("*.rst.txt")):
            text = path.read_text(encoding="utf-8", errors="replace")
            text = re.sub(r"^\.\. .*$", "", text, flags=re.M)
            text = re.sub(r":\w+:`~?([^`]*)`", r"\1", text)
            out.extend(c for c in _paragraph_chunks(text) if not c.lstrip().startswith((">>>", "::")))
            total += len(text)
            if total >= limit_chars:
                return out
    return out


_CHAT_REQUESTS = [
    "Tell me something wise.",
    "Can you share a quote with me?",
    "I need some cheering up. Say something.",
    "Give me a thought for the day.",
    "What is a good saying to remember?",
    "Tell me a short story or joke.",
    "Do you know any proverbs?",
    "Say something to make me think.",
]


def load_documents(max_chars_per_source: int = 1_500_000, require_all: bool = True) -> list[Document]:
    """All natural-text documents, in a fixed order (deterministic for a given set of installed packages).

    `require_all`: raise `MissingSourcesError` when a package of `PACKAGES` is missing (False: warn and
    read what is installed). Nothing is installed.
    """
    check_packages(require_all)
    docs: list[Document] = []
    # Fortunes are small collections: read up to 4x the cap (all of them at the default cap).
    en = _read_fortunes(FORTUNES, 4 * max_chars_per_source)
    rng = random.Random(1234)
    half = len(en) // 2
    # Half the English fortunes become chat turns, the other half plain English prose.
    for text in en[:half]:
        docs.append(Document("chat", "fortunes", f"User: {rng.choice(_CHAT_REQUESTS)}\nAssistant: {text}"))
    docs.extend(Document("en", "fortunes", t) for t in en[half:])
    for lang in ("de", "es", "it"):
        texts = _read_fortunes(FORTUNES / lang, 4 * max_chars_per_source)
        docs.extend(Document(lang, f"fortunes-{lang}", t) for t in texts)
    for lang in ("de", "es", "fr", "it", "ja"):
        docs.extend(Document(lang, f"manpages-{lang}", t) for t in _read_man(lang, max_chars_per_source))
    docs.extend(Document("code", "python-stdlib", t) for t in _read_stdlib_code(max_chars_per_source))
    docs.extend(Document("stem", "python3-doc", t) for t in _read_pydoc(max_chars_per_source))
    return docs


def iter_by_category(docs: list[Document]) -> Iterator[tuple[str, list[Document]]]:
    """Group documents by category in sorted category order."""
    cats: dict[str, list[Document]] = {}
    for d in docs:
        cats.setdefault(d.category, []).append(d)
    for c in sorted(cats):
        yield c, cats[c]
