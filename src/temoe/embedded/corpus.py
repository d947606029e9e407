"""The pretraining mixture: verifiable tasks (math, multiple choice, fact descriptions) plus natural text.

`Corpus.sample(rng)` draws one training document; the draw depends only on the rng, so a batch built
from `random.Random(f"{seed}-{step}")` is reproducible and resuming needs no data-loader state.
Held out from every draw: math test/prompt keys, questions about test countries, and the prompt documents.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field

from temoe.embedded import math_problems, multiple_choice, sources, tasks, world

NATURAL_CATEGORIES = ("chat", "code", "stem", "en", "de", "es", "fr", "it", "ja")
PROMPT_CATEGORIES = ("chat", "code", "math", "stem", "en", "de", "es", "fr", "it", "ja")
PROMPTS_PER_CATEGORY = 100

# Target share of training characters per group (tasks get most of the budget so the tiny model learns them).
DEFAULT_SHARES = {"math": 0.30, "mc": 0.25, "bio": 0.30, "natural": 0.15}
# The mixture from `PretrainConfig.drill_from_step` on: option-letter lookup drills (`tasks.lookup_drill`)
# take a tenth of the characters, from math (already learnt by then) and descriptions.
DRILL_SHARES = {"math": 0.25, "mc": 0.25, "bio": 0.25, "natural": 0.15, "drill": 0.10}
MC_LANG_SHARES = {"en": 0.5, "de": 0.1, "es": 0.1, "fr": 0.1, "it": 0.1, "ja": 0.1}
BIO_LANG_SHARES = {"en": 0.35, "de": 0.13, "es": 0.13, "fr": 0.13, "it": 0.13, "ja": 0.13}


@dataclass
class Corpus:
    """Document sampler of the embedded corpus; deterministic given `seed` and the installed sources.

    `natural_chars`: cap on characters read per natural-text source (smaller = faster build, e.g. for CI).
    `require_sources`: fail with the `apt-get install` line when a Debian text source is missing
    (`sources.MissingSourcesError`); False builds from the installed sources only. Nothing is installed.
    """

    seed: int = 0
    natural_chars: int = 1_500_000
    require_sources: bool = True
    shares: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SHARES))

    def __post_init__(self) -> None:
        self.world, self.train_countries, self.test_countries = multiple_choice.split_world(self.seed)
        self.math_held_out = math_problems.held_out_keys(self.seed)
        docs = sources.load_documents(self.natural_chars, require_all=self.require_sources)
        rng = random.Random(f"natural-split-{self.seed}")
        self.natural: dict[str, list[str]] = {}
        self.prompt_docs: dict[str, list[str]] = {}
        for cat, cat_docs in sources.iter_by_category(docs):
            texts = [d.text for d in cat_docs]
            rng.shuffle(texts)
            self.prompt_docs[cat] = texts[:PROMPTS_PER_CATEGORY]
            # Sources repeat texts (man-page boilerplate, a fortune in two files): drop every copy.
            held_out = set(self.prompt_docs[cat])
            self.natural[cat] = [t for t in texts[PROMPTS_PER_CATEGORY:] if t not in held_out]
        self.categories = [c for c in NATURAL_CATEGORIES if self.natural.get(c)]
        missing = sorted(set(NATURAL_CATEGORIES) - set(self.categories))
        if missing:
            print(f"[temoe] warning: no natural text for categories {missing}; corpus continues without them")
        self._leaves = self._leaf_weights()

    def with_shares(self, shares: dict[str, float]) -> Corpus:
        """The same corpus (sources, splits) with another mixture, e.g. DRILL_SHARES; nothing is re-read."""
        other = copy.copy(self)
        other.shares = dict(shares)
        other._leaves = other._leaf_weights()
        return other

    def _leaf_weights(self) -> list[tuple[str, str, float]]:
        """(group, sub, probability per draw) so that the expected character share matches `shares`."""
        targets: list[tuple[str, str, float]] = []
        targets.append(("math", "en", self.shares["math"]))
        targets += [("mc", lang, self.shares["mc"] * s) for lang, s in MC_LANG_SHARES.items()]
        targets += [("bio", lang, self.shares["bio"] * s) for lang, s in BIO_LANG_SHARES.items()]
        targets += [("natural", c, self.shares["natural"] / len(self.categories)) for c in self.categories]
        if self.shares.get("drill", 0.0) > 0:
            targets.append(("drill", "all", self.shares["drill"]))
        rng = random.Random(0)
        leaves = []
        for group, sub, share in targets:
            mean_chars = sum(len(self._draw(group, sub, rng)) for _ in range(50)) / 50
            leaves.append((group, sub, share / mean_chars))
        total = sum(w for _, _, w in leaves)
        return [(g, s, w / total) for g, s, w in leaves]

    def _draw(self, group: str, sub: str, rng: random.Random) -> str:
        if group == "math":
            p = math_problems.train_problem(rng, self.math_held_out)
            return tasks.math_document(p.question, p.solution)
        if group == "mc":
            q = multiple_choice.train_question(rng, self.world, self.train_countries, sub)
            return tasks.mc_document(q.question, q.choices, q.answer)
        if group == "bio":
            # Descriptions cover every country, test countries included: facts are known, questions not.
            return world.bio(rng.choice(self.world), sub, rng)
        if group == "natural":
            return rng.choice(self.natural[sub])
        if group == "drill":
            q = multiple_choice.train_question(rng, self.world, self.train_countries, rng.choice(world.LANGS))
            return tasks.lookup_drill(q.choices, rng)
        raise ValueError(f"unknown corpus group {group!r}")

    def sample(self, rng: random.Random) -> tuple[str, str]:
        """One training document: (`group/sub` label, text)."""
        group, sub, _ = rng.choices(self._leaves, weights=[w for _, _, w in self._leaves])[0]
        return f"{group}/{sub}", self._draw(group, sub, rng)

    def prompts(self) -> list[dict[str, str]]:
        """The prompt set: PROMPTS_PER_CATEGORY prompts per category, none of which is trained on."""
        out = []
        for p in math_problems.prompt_problems(PROMPTS_PER_CATEGORY, self.seed):
            out.append({"category": "math", "prompt": tasks.format_prompt({"question": p.question}, "math")})
        for cat in self.categories:
            for text in self.prompt_docs[cat]:
                out.append({"category": cat, "prompt": _prefix(text)})
        return out


def _prefix(text: str, frac: float = 0.4, min_chars: int = 60, max_chars: int = 300) -> str:
    """The first part of a document, cut at whitespace: a natural continuation prompt."""
    n = min(max(int(len(text) * frac), min_chars), max_chars, len(text))
    cut = text.rfind(" ", 0, n)
    return text[: cut if cut > min_chars // 2 else n].rstrip()
