"""Generated arithmetic and algebra word problems with exact answers and short worked solutions.

Addition and subtraction are worked column by column (`add_steps`, `sub_steps`), then the answer is boxed:
`47 + 38: 7 + 8 = 15 and 4 + 3 + 1 = 8. The answer is \\boxed{85}.`

A problem is identified by its key `(kind, operands)`; the held-out test keys never occur in training text,
so test accuracy measures arithmetic that generalises rather than memorised question strings.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

NAMES = [
    "Ana",
    "Ben",
    "Carla",
    "Dev",
    "Emma",
    "Farid",
    "Greta",
    "Hiro",
    "Ines",
    "Jonas",
    "Kofi",
    "Lena",
    "Mia",
    "Noah",
    "Omar",
    "Priya",
    "Quinn",
    "Rosa",
    "Sam",
    "Tara",
]
ITEMS = ["apples", "books", "coins", "marbles", "pencils", "stamps", "shells", "cards", "eggs", "stones"]

# Kinds used in the test split (exact answers a 7M model can generalise to); `mul` and `solve_mul` only train.
TEST_KINDS = ("add", "sub", "solve_add")
TRAIN_KINDS = ("add", "sub", "solve_add", "mul", "solve_mul")
TRAIN_KIND_WEIGHTS = (0.3, 0.3, 0.2, 0.1, 0.1)


@dataclass(frozen=True)
class MathProblem:
    """A problem: `question` (prompt text), `solution` (worked steps ending in \\boxed{answer}), `answer`."""

    kind: str
    operands: tuple[int, int]
    question: str
    solution: str
    answer: str

    @property
    def key(self) -> tuple[str, tuple[int, int]]:
        return (self.kind, self.operands)


def _operands(kind: str, rng: random.Random) -> tuple[int, int]:
    if kind == "add":
        return rng.randint(10, 99), rng.randint(10, 99)
    if kind == "sub":
        a = rng.randint(20, 99)
        return a, rng.randint(1, a - 1)
    if kind == "solve_add":
        a = rng.randint(1, 60)
        return a, rng.randint(a + 1, 99)
    if kind == "mul":
        return rng.randint(2, 12), rng.randint(2, 12)
    if kind == "solve_mul":
        a = rng.randint(2, 9)
        return a, a * rng.randint(2, 12)
    raise ValueError(f"unknown math kind {kind!r}; valid: {TRAIN_KINDS}")


def add_steps(a: int, b: int) -> str:
    """Column addition of two numbers below 100, one digit column at a time with the carry written out.

    `add_steps(47, 38)` -> "7 + 8 = 15 and 4 + 3 + 1 = 8": each step is a one-digit fact plus copying, which a
    small model learns far more reliably than producing "85" in one go (the carry decides the first digit).
    """
    ones = a % 10 + b % 10
    tens = a // 10 + b // 10 + ones // 10
    return f"{a % 10} + {b % 10} = {ones} and {a // 10} + {b // 10} + {ones // 10} = {tens}"


def sub_steps(a: int, b: int) -> str:
    """Column subtraction `a - b` (0 <= b <= a < 100) with the borrow written out.

    `sub_steps(47, 19)` -> "17 - 9 = 8 and 4 - 1 - 1 = 2"; without a borrow the tens step subtracts 0.
    """
    borrow = int(a % 10 < b % 10)
    top = a % 10 + 10 * borrow
    return (f"{top} - {b % 10} = {top - b % 10} and "
            f"{a // 10} - {b // 10} - {borrow} = {a // 10 - b // 10 - borrow}")


def render(kind: str, operands: tuple[int, int], rng: random.Random) -> MathProblem:
    """Render a problem of `kind` with `operands` using a random template (bare equation or word problem)."""
    a, b = operands
    who, item = rng.choice(NAMES), rng.choice(ITEMS)
    word = rng.random() < 0.5
    if kind == "add":
        c = a + b
        q = (
            f"{who} has {a} {item} and gets {b} more. How many {item} does {who} have now?"
            if word
            else rng.choice([f"What is {a} + {b}?", f"Compute {a} + {b}.", f"Add {a} and {b}."])
        )
        steps = f"{a} + {b}: {add_steps(a, b)}."
    elif kind == "sub":
        c = a - b
        q = (
            f"{who} had {a} {item} and gave away {b}. How many {item} are left?"
            if word
            else rng.choice([f"What is {a} - {b}?", f"Compute {a} - {b}.", f"Subtract {b} from {a}."])
        )
        steps = f"{a} - {b}: {sub_steps(a, b)}."
    elif kind == "solve_add":
        c = b - a
        q = (
            f"{who} had some {item}, found {a} more and now has {b}. How many {item} did {who} have at first?"
            if word
            else rng.choice([f"Solve for x: x + {a} = {b}.", f"Find x if x + {a} = {b}."])
        )
        steps = f"x + {a} = {b}, so x = {b} - {a}: {sub_steps(b, a)}."
    elif kind == "mul":
        c = a * b
        q = (
            f"There are {a} boxes with {b} {item} in each box. How many {item} are there in total?"
            if word
            else rng.choice([f"What is {a} * {b}?", f"Compute {a} * {b}.", f"Multiply {a} by {b}."])
        )
        steps = f"{a} * {b} = {c}."
    elif kind == "solve_mul":
        c = b // a
        q = (
            f"{who} shares {b} {item} equally among {a} friends. How many {item} does each friend get?"
            if word
            else rng.choice([f"Solve for x: {a}x = {b}.", f"Find x if {a}x = {b}."])
        )
        steps = f"{b} / {a} = {c}." if word else f"{a}x = {b}, so x = {b} / {a} = {c}."
    else:
        raise ValueError(f"unknown math kind {kind!r}; valid: {TRAIN_KINDS}")
    return MathProblem(kind, (a, b), q, f"{steps} The answer is \\boxed{{{c}}}.", str(c))


def test_problems(n: int = 300, seed: int = 0) -> list[MathProblem]:
    """The held-out test split: `n` problems with distinct keys from TEST_KINDS (deterministic given seed)."""
    rng = random.Random(f"math-test-{seed}")
    seen: set[tuple[str, tuple[int, int]]] = set()
    out: list[MathProblem] = []
    while len(out) < n:
        kind = TEST_KINDS[len(out) % len(TEST_KINDS)]
        ops = _operands(kind, rng)
        if (kind, ops) not in seen:
            seen.add((kind, ops))
            out.append(render(kind, ops, rng))
    return out


def prompt_problems(n: int = 100, seed: int = 0) -> list[MathProblem]:
    """Problems for the prompt set (switch-rate surveys, controller training), disjoint from the test."""
    test = {p.key for p in test_problems(seed=seed)}
    rng = random.Random(f"math-prompts-{seed}")
    out: list[MathProblem] = []
    seen: set[tuple[str, tuple[int, int]]] = set()
    while len(out) < n:
        kind = TEST_KINDS[len(out) % len(TEST_KINDS)]
        ops = _operands(kind, rng)
        if (kind, ops) not in test and (kind, ops) not in seen:
            seen.add((kind, ops))
            out.append(render(kind, ops, rng))
    return out


def held_out_keys(seed: int = 0) -> set[tuple[str, tuple[int, int]]]:
    """Keys never used in training: the test split and the prompt set."""
    return {p.key for p in test_problems(seed=seed)} | {p.key for p in prompt_problems(seed=seed)}


def train_problem(rng: random.Random, held_out: set[tuple[str, tuple[int, int]]]) -> MathProblem:
    """One training problem whose key is not held out."""
    kind = rng.choices(TRAIN_KINDS, weights=TRAIN_KIND_WEIGHTS)[0]
    while True:
        ops = _operands(kind, rng)
        if (kind, ops) not in held_out:
            return render(kind, ops, rng)
