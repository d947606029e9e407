"""Four-option multiple-choice questions about the invented world (MMLU-like; MMMLU-like in five languages).

Countries are split once: questions about the held-out countries appear only in the test files; their facts
still appear in pretraining through paraphrased descriptions (`world.bio`) in every language.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from temoe.embedded.world import ATTRIBUTES, QUESTIONS, Country, distractors, make_world

LETTERS = "ABCD"
SUBJECTS = {"capital": "geography", "year": "history", "export": "economics", "animal": "culture"}
MULTILINGUAL_LANGS = ("de", "es", "fr", "it", "ja")
NUM_TEST_COUNTRIES = 52


@dataclass(frozen=True)
class MCQuestion:
    """A question with four `choices` and the correct `answer` letter."""

    country: str
    attribute: str
    lang: str
    question: str
    choices: tuple[str, str, str, str]
    answer: str

    @property
    def subject(self) -> str:
        return SUBJECTS[self.attribute]


def split_world(seed: int = 0) -> tuple[list[Country], list[Country], list[Country]]:
    """(world, train_countries, test_countries); test countries never get questions in training."""
    world = make_world(seed=seed)
    order = list(range(len(world)))
    random.Random(f"mc-split-{seed}").shuffle(order)
    test = [world[i] for i in sorted(order[:NUM_TEST_COUNTRIES])]
    train = [world[i] for i in sorted(order[NUM_TEST_COUNTRIES:])]
    return world, train, test


def make_question(
    country: Country, attribute: str, lang: str, world: list[Country], rng: random.Random
) -> MCQuestion:
    """A question with the right value at a random position among three distractors."""
    right = country.value(attribute, lang)
    options = [right, *distractors(country, attribute, lang, world, rng)]
    rng.shuffle(options)
    return MCQuestion(
        country.name,
        attribute,
        lang,
        QUESTIONS[lang][attribute].format(name=country.name),
        tuple(options),
        LETTERS[options.index(right)],
    )


def test_questions(seed: int = 0) -> list[MCQuestion]:
    """English test split: every attribute of every held-out country (52 x 4 = 208 questions)."""
    world, _, test = split_world(seed)
    rng = random.Random(f"mc-test-{seed}")
    return [make_question(c, a, "en", world, rng) for c in test for a in ATTRIBUTES]


def multilingual_test_questions(per_lang: int = 60, seed: int = 0) -> list[MCQuestion]:
    """Multilingual test split: `per_lang` questions about held-out countries in each of de/es/fr/it/ja."""
    world, _, test = split_world(seed)
    rng = random.Random(f"mmc-test-{seed}")
    pairs = [(c, a) for c in test for a in ATTRIBUTES]
    out = []
    for lang in MULTILINGUAL_LANGS:
        for c, a in rng.sample(pairs, per_lang):
            out.append(make_question(c, a, lang, world, rng))
    return out


def train_question(rng: random.Random, world: list[Country], train: list[Country], lang: str) -> MCQuestion:
    """A training question about a random training country in `lang`."""
    return make_question(rng.choice(train), rng.choice(ATTRIBUTES), lang, world, rng)
