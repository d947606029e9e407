"""Grader tables: MATH equivalence (Hendrycks normalisation + documented extensions), boxed extraction,
strict multiple-choice letter extraction. Each row states the expected verdict."""

from __future__ import annotations

import pytest

from temoe.eval import is_equiv
from temoe.eval.graders import extract_boxed, extract_choice, extract_math_answer, last_boxed_only_string

# (model answer, reference, expected verdict, why)
MATH_PAIRS = [
    ("\\frac{1}{2}", "\\frac12", True, "\\frac12 -> \\frac{1}{2}"),
    ("\\dfrac{1}{2}", "\\frac{1}{2}", True, "dfrac -> frac"),
    ("\\tfrac{3}{4}", "\\frac34", True, "tfrac -> frac and \\frac34"),
    ("0.5", "\\frac{1}{2}", True, "official 0.5 rule"),
    ("0.5", "\\frac12", True, "0.5 vs \\frac12"),
    ("1/2", "\\frac{1}{2}", True, "integer a/b -> frac"),
    ("\\frac{2}{4}", "\\frac{1}{2}", True, "extension: equal plain-number values"),
    ("0.50", "\\frac12", True, "extension: numeric value"),
    ("0.25", "\\frac{1}{2}", False, "different value"),
    ("\\frac{1}{3}", "0.33", False, "rounded decimal is not the fraction"),
    ("5\\text{ cm}", "5", True, "official unit cut at '\\text{ '"),
    ("10\\text{cm}", "10", True, "extension: glued unit"),
    ("10 \\mbox{ inches}", "10", True, "\\mbox units"),
    ("\\text{Tuesday}", "Tuesday", True, "extension: whole-answer \\text{} unwrapped"),
    ("\\text{(C)}", "\\text{(C)}", True, "identical strings"),
    ("\\text{(C)}", "\\text{(D)}", False, "different choice"),
    ("90^\\circ", "90", True, "degrees ^\\circ"),
    ("90^{\\circ}", "90", True, "degrees ^{\\circ}"),
    ("90°", "90", True, "extension: unicode degree sign"),
    ("45\\%", "45", True, "percent dropped"),
    ("\\$18.90", "18.90", True, "dollar sign dropped"),
    ("x = 5", "5", True, "short lhs dropped (x=)"),
    ("y=2x+1", "2x+1", True, "short lhs dropped (y=)"),
    ("abc=5", "5", False, "long lhs kept"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})", True, "\\left/\\right and spaces"),
    ("\\sqrt3", "\\sqrt{3}", True, "\\sqrt3 -> \\sqrt{3}"),
    ("2\\sqrt{2}", "\\sqrt{8}", False, "no symbolic simplification"),
    (".5", "\\frac12", True, "leading . -> 0."),
    ("5.", "5", True, "extension: trailing period"),
    ("2.0", "2", True, "extension: numeric 2.0 == 2"),
    ("1,000", "1000", True, "extension: thousands separator"),
    ("1{,}000", "1000", True, "extension: LaTeX thousands separator"),
    ("1,2", "12", False, "not a thousands group"),
    ("-\\frac{3}{4}", "-0.75", True, "signed numeric value"),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", True,
     "spaces in matrices"),
    ("3", "4", False, "different integers"),
    ("\\frac{1}{2}", "\\frac{1}{2}\\pi", False, "extra factor"),
    (None, None, False, "None never equals None"),
    (None, "3", False, "missing answer"),
    ("", "3", False, "empty answer"),
]


@pytest.mark.parametrize("a,b,expected,why", MATH_PAIRS, ids=[row[3] for row in MATH_PAIRS])
def test_is_equiv_table(a, b, expected, why):
    assert len(MATH_PAIRS) >= 30
    assert is_equiv(a, b) is expected, why
    if a is not None and b is not None:
        assert is_equiv(b, a) is expected, "symmetric"


# The official normalisation without extensions: these pairs differ from the default mode.
OFFICIAL_ONLY = [
    ("10\\text{cm}", "10", False),
    ("5.", "5", False),
    ("2.0", "2", False),
    ("1,000", "1000", False),
    ("\\frac{2}{4}", "\\frac{1}{2}", False),
    ("5\\text{ cm}", "5", True),
    ("0.5", "\\frac12", True),
    ("\\dfrac{1}{2}", "\\frac{1}{2}", True),
]


@pytest.mark.parametrize("a,b,expected", OFFICIAL_ONLY)
def test_is_equiv_official_mode(a, b, expected):
    assert is_equiv(a, b, official=True) is expected


BOXED = [
    ("so \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}"),
    ("first \\boxed{1} then \\boxed{\\left\\{ 2, 3 \\right\\}}", "\\left\\{ 2, 3 \\right\\}"),
    ("\\boxed{{a}^{b}}", "{a}^{b}"),
    ("\\fbox{7}", "7"),
    ("$\\boxed 5$", "5"),
    ("\\boxed{unclosed {", None),
    ("no box here", None),
    ("\\boxed{}", None),
]


@pytest.mark.parametrize("text,expected", BOXED)
def test_extract_boxed_nested(text, expected):
    assert extract_boxed(text) == expected


def test_last_boxed_only_string_returns_whole_box():
    assert last_boxed_only_string("a \\boxed{x^{2}} b") == "\\boxed{x^{2}}"


def test_extract_math_answer_prefers_boxed_then_answer_tag():
    assert extract_math_answer("<answer>\\boxed{3}</answer>") == "3"
    assert extract_math_answer("so <answer>\\(\\displaystyle 4\\)</answer>") == "4"
    assert extract_math_answer("<answer> </answer>") is None
    assert extract_math_answer("I think it is 5") is None


MC_CASES = [
    ("Answer: B", "B"),
    ("The answer is C.", "C"),
    ("Answer: Paris. The answer is B.", "B"),  # two answer phrases on one line: the one naming a letter
    ("Answer: B. The answer is C.", "C"),  # a revision on the same line: the last one wins
    ("<answer>B</answer>", "B"),
    ("<answer>B) Paris</answer>", "B"),  # the reference parser returned A here ("B) PARIS" contains A)
    ("<answer>(D)</answer>", "D"),
    ("reasoning... \\boxed{B}", "B"),
    ("\\boxed{\\text{(C)}}", "C"),
    ("(B)", "B"),
    ("B", "B"),
    ("  D.  ", "D"),
    ("Final answer: **A**", "A"),
    ("Answer: A\n...\nWait, actually. Answer: C", "C"),  # last occurrence wins
    ("Réponse : D", "D"),
    ("<answer>A or B</answer>", None),  # ambiguous
    ("Answer: A or B", None),
    ("The answer is B, C", None),
    ("<answer>AB</answer>", None),
    ("<answer>Paris</answer>", None),  # option text, not a letter
    ("The answer is a bit unclear", None),  # lower-case article is not option A
    ("I would pick E", None),  # not a valid option letter, no answer marker
    ("Answer: E", None),  # outside A-D
    ("No idea.", None),
    ("", None),
]


@pytest.mark.parametrize("text,expected", MC_CASES)
def test_extract_choice_strict(text, expected):
    assert extract_choice(text) == expected


def test_extract_choice_more_letters():
    assert extract_choice("Answer: E", letters="ABCDE") == "E"
