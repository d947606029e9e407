"""Pure answer graders: MATH equivalence (Hendrycks et al. 2021 normalisation), boxed-answer and
multiple-choice letter extraction. Strings in, verdicts out; no model, no I/O.

MATH equivalence (`is_equiv`) re-implements the normalisation of the official MATH repository
(`math_equivalence.py`) step by step, in the same order:

1. drop newlines and `\\!`; `\\\\` -> `\\`; `tfrac`/`dfrac` -> `frac`; drop `\\left`, `\\right`,
   `^{\\circ}`, `^\\circ`, `\\$`;
2. cut trailing units at the first `"\\text{ "` (text with a leading space); drop `\\%` and `%`;
3. `" ."` -> `" 0."`, `"{."` -> `"{0."`, a leading `"."` -> `"0."`;
4. `a=b` with a left-hand side of at most 2 characters keeps `b` (`x=5` -> `5`);
5. `\\sqrt3` -> `\\sqrt{3}`; remove all spaces; `\\frac12` -> `\\frac{1}{2}`, `\\frac1b` -> `\\frac{1}b`;
6. exactly `0.5` -> `\\frac{1}{2}`; an integer ratio `a/b` -> `\\frac{a}{b}`;
7. compare the normalised strings.

Differences from the official function, all deliberate:

- `None` never equals `None` (the official returns True, so an item without a boxed reference answer
  and a completion without an answer scored as correct).
- With `official=False` (the default) five extensions run after step 1-6, each tested:
  a trailing period is removed (`5.` == `5`); a whole-answer `\\text{X}`/`\\textbf{X}`/`\\mbox{X}`
  is unwrapped (`\\text{Tuesday}` == `Tuesday`); trailing unit text right after a number without a
  leading space is removed (`10\\text{cm}` == `10`); `\\degree` and `°` are dropped like `^\\circ`;
  thousands separators (`1,000`, `1{,}000`) are removed; and two answers that both parse as plain
  numbers (integers, decimals, `\\frac{a}{b}` of integers, with a sign) are equal when their values
  agree to 1e-9 relative (`0.50` == `\\frac12`, `2.0` == `2`). `official=True` skips all extensions.

`MATH_GRADERS` names the two modes for callers: "official" (`official=True`) and "lenient" (the default
here; `temoe eval` grades the local-file MATH task with "official" unless told otherwise).

Multiple-choice extraction (`extract_choice`) is strict; see its docstring for the exact rules.
"""

from __future__ import annotations

import re

__all__ = [
    "MATH_GRADERS",
    "is_equiv",
    "strip_string",
    "last_boxed_only_string",
    "remove_boxed",
    "extract_boxed",
    "extract_math_answer",
    "extract_choice",
]


#: MATH answer comparison modes: Hendrycks et al.'s normalisation alone, or with the extensions above.
MATH_GRADERS = ("official", "lenient")


# ---------------------------------------------------------------- MATH normalisation (official steps)

def _fix_fracs(s: str) -> str:
    """`\\frac12` -> `\\frac{1}{2}`, `\\frac1{b}` -> `\\frac{1}{b}`; braced fractions are left alone."""
    head, *parts = s.split("\\frac")
    out = head
    for part in parts:
        out += "\\frac"
        if part.startswith("{"):
            out += part
            continue
        if len(part) < 2:
            return s  # malformed (`\frac` with < 2 following characters): leave the string as it was
        a, b, rest = part[0], part[1], part[2:]
        out += "{" + a + "}" + (b + rest if b == "{" else "{" + b + "}" + rest)
    return out


def _fix_a_slash_b(s: str) -> str:
    """An integer ratio `3/4` -> `\\frac{3}{4}` (only when both sides are plain integers)."""
    parts = s.split("/")
    if len(parts) != 2 or not all(re.fullmatch(r"-?\d+", p) for p in parts):
        return s
    a, b = int(parts[0]), int(parts[1])
    if s != f"{a}/{b}":  # official: leading zeros etc. are not normalised
        return s
    return "\\frac{" + str(a) + "}{" + str(b) + "}"


def _remove_right_units(s: str) -> str:
    """Cut at `"\\text{ "`: in MATH a text block starting with a space only ever holds units."""
    if "\\text{ " in s:
        return s.split("\\text{ ")[0]
    return s


def _fix_sqrt(s: str) -> str:
    """`\\sqrt3` -> `\\sqrt{3}`."""
    head, *parts = s.split("\\sqrt")
    out = head
    for part in parts:
        if part and part[0] != "{":
            out += "\\sqrt{" + part[0] + "}" + part[1:]
        else:
            out += "\\sqrt" + part
    return out


def strip_string(s: str, official: bool = False) -> str:
    """Normalise a MATH answer string (steps in the module docstring). Raises nothing on odd input."""
    # Extensions that must run before units are cut or spaces removed.
    if not official:
        s = s.strip()
        s = re.sub(r"\.$", "", s)  # trailing period: "5." -> "5"
        s = s.replace("\\degree", "").replace("°", "")
        s = _unwrap_text(s)
    # Step 1
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "")
    # Step 2
    s = _remove_right_units(s)
    s = s.replace("\\%", "").replace("%", "")
    if not official:
        # Units glued to a number: "10\text{cm}", "10\mbox{ inches}" -> "10".
        s = re.sub(r"(?<=[\d}])\s*\\(?:text|mbox|mathrm)\{\s*[A-Za-z][A-Za-z\s^\d]*\}$", "", s)
    # Step 3
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    # Step 4
    if len(s.split("=")) == 2 and len(s.split("=")[0]) <= 2:
        s = s.split("=")[1]
    # Step 5
    s = _fix_sqrt(s)
    s = s.replace(" ", "")
    s = _fix_fracs(s)
    # Step 6
    if s == "0.5":
        s = "\\frac{1}{2}"
    if not official:
        s = re.sub(r"^(-?\d{1,3})((?:(?:,|\{,\})\d{3})+)(\.\d+)?$",
                   lambda m: m.group(1) + m.group(2).replace("{,}", "").replace(",", "") + (m.group(3) or ""),
                   s)
    s = _fix_a_slash_b(s)
    return s


def _unwrap_text(s: str) -> str:
    """A whole answer `\\text{X}` (or `\\textbf`, `\\mbox`, `\\mathrm`) -> `X`."""
    m = re.fullmatch(r"\\(?:text|textbf|mbox|mathrm)\{(.*)\}", s.strip(), flags=re.S)
    if m and "{" not in m.group(1) and "}" not in m.group(1):
        return m.group(1).strip()
    return s


_NUM_RE = re.compile(r"^(-?)(?:(\d+(?:\.\d*)?|\.\d+)|\\frac\{(-?\d+)\}\{(-?\d+)\})$")


def _as_number(s: str) -> float | None:
    """The value of a normalised plain number (`-3`, `0.25`, `\\frac{3}{4}`), else None."""
    m = _NUM_RE.match(s)
    if not m:
        return None
    sign = -1.0 if m.group(1) else 1.0
    if m.group(2) is not None:
        return sign * float(m.group(2))
    den = int(m.group(4))
    return None if den == 0 else sign * int(m.group(3)) / den


def is_equiv(a: str | None, b: str | None, *, official: bool = False) -> bool:
    """Whether two MATH answers are equivalent after Hendrycks et al.'s normalisation.

    `None` (no answer extracted) is never equivalent to anything, including `None`. With
    `official=True` only the official normalisation runs (no extensions; see the module docstring).
    """
    if a is None or b is None:
        return False
    try:
        sa, sb = strip_string(a, official), strip_string(b, official)
    except Exception:  # mirror the official fallback: compare raw strings if normalisation fails
        return a == b
    if sa == sb:
        return True
    if official:
        return False
    va, vb = _as_number(sa), _as_number(sb)
    return va is not None and vb is not None and abs(va - vb) <= 1e-9 * max(1.0, abs(va), abs(vb))


# ---------------------------------------------------------------- boxed answers

def last_boxed_only_string(text: str) -> str | None:
    """The last `\\boxed{...}` (or `\\fbox{...}`, or `\\boxed x` with a space) in `text`, braces matched.

    Returns the whole `\\boxed{...}` substring, or None if there is none or its braces never close.
    """
    idx = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if idx < 0:
        return None
    if text.startswith("\\boxed ", idx):  # `\boxed 5`: the argument runs to the next `$` or space
        arg = text[idx + len("\\boxed "):]
        arg = re.split(r"[\s$]", arg, maxsplit=1)[0]
        return "\\boxed " + arg if arg else None
    depth = 0
    for j in range(idx, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[idx:j + 1]
    return None


def remove_boxed(s: str | None) -> str | None:
    """`\\boxed{X}` -> `X`, `\\fbox{X}` -> `X`, `\\boxed X` -> `X`; anything else -> None."""
    if s is None:
        return None
    for left in ("\\boxed ", "\\boxed{", "\\fbox{"):
        if s.startswith(left):
            inner = s[len(left):]
            if left.endswith("{"):
                if not inner.endswith("}"):
                    return None
                inner = inner[:-1]
            return inner
    return None


def extract_boxed(text: str | None) -> str | None:
    """Content of the last `\\boxed{...}` in `text` (nested braces kept intact), or None."""
    if text is None:
        return None
    inner = remove_boxed(last_boxed_only_string(text))
    return inner if inner is None or inner.strip() else None


_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", flags=re.S | re.I)


def extract_math_answer(completion: str) -> str | None:
    """The model's MATH answer: the last `\\boxed{}`; else the last `<answer>...</answer>`; else None.

    A boxed answer inside the answer tags wins (`<answer>\\boxed{3}</answer>` -> `3`). Inline math
    delimiters `\\( \\)`, `\\[ \\]`, `$` around an `<answer>` body are stripped. Empty -> None.
    """
    boxed = extract_boxed(completion)
    if boxed is not None:
        return boxed.strip()
    tags = _ANSWER_TAG.findall(completion)
    if not tags:
        return None
    body = tags[-1].strip()
    body = re.sub(r"^(\\\(|\\\[|\$+)\s*(\\displaystyle)?", "", body)
    body = re.sub(r"(\\\)|\\\]|\$+)$", "", body).strip()
    return body or None


# ---------------------------------------------------------------- multiple choice

def _letter_of(snippet: str, letters: str) -> str | None:
    """The single choice letter a short answer snippet names, or None if it names none or several.

    Accepted shapes (after stripping whitespace, `*`, `\\boxed{}`/`\\text{}`/`\\textbf{}` wrappers):
    `B`, `(B)`, `[B]`, `B.`, `B)`, `B:`, and a letter followed by one of `.`/`)`/`:` and the option's text
    (`B) Paris`, `B. Paris`). Anything else (`A or B`, `AB`, `Paris`, `b`) names no letter.
    """
    s = snippet.strip().strip("*").strip()
    for _ in range(3):  # unwrap up to three nested wrappers: \boxed{\text{(B)}}
        m = re.fullmatch(r"\\(?:boxed|text|textbf|mathrm|mathbf)\{(.*)\}", s, flags=re.S)
        if not m:
            break
        s = m.group(1).strip()
    s = s.strip("*").strip()
    cls = f"[{letters}]"
    m = re.fullmatch(rf"[(\[]?({cls})[)\]]?[.:]?", s)
    if m:
        return m.group(1)
    m = re.fullmatch(rf"[(\[]?({cls})[)\].:]\s+(.+)", s, flags=re.S)
    if m and not re.search(rf"(?<![A-Za-z]){cls}[).:](?:\s|$)", m.group(2)):
        return m.group(1)
    return None


def extract_choice(completion: str, letters: str = "ABCD") -> str | None:
    """Strictly extract the chosen option letter from a generated `completion`, or None.

    Sources, in priority order; the first source that occurs decides, using its LAST occurrence
    (a model may revise itself):

    1. `<answer>X</answer>` tags;
    2. `\\boxed{X}`;
    3. an answer phrase: `Answer: X`, `answer is X`, `answer: (X)`, `Final answer: X` (any case;
       also `Réponse`, `Respuesta`, `Antwort`, `Risposta`, `答案`, `回答`);
    4. the whole completion is a lone letter (`B`, `(B)`, `B.`, `B) Paris`).

    The found snippet must name exactly one letter of `letters` in one of the shapes accepted by
    `_letter_of` (`B`, `(B)`, `B)`, `B.`, `B) option text`); `A or B`, `AB`, lower-case `b` or a
    bare option text name none, and the result is None (ambiguous answers are wrong, never guessed).
    Letters are upper-case only, so the English article "a" is never read as option A.
    """
    tags = _ANSWER_TAG.findall(completion)
    if tags:
        return _letter_of(tags[-1], letters)
    boxed = extract_boxed(completion)
    if boxed is not None:
        return _letter_of(boxed, letters)
    phrase = re.compile(r"(?:answer|réponse|respuesta|antwort|risposta|resposta|答案|回答)"
                        r"(?:\s+is)?\s*[:：]?[ \t]*(?:\*\*)?", flags=re.I)
    # Every phrase occurrence with the rest of its line: "Answer: Paris. The answer is B." has two, and
    # the second (which names a letter) decides.
    found = [completion[m.end():].split("\n", 1)[0] for m in phrase.finditer(completion)]
    found = [f for f in found if re.match(r"[(\[]?[A-Z](?![A-Za-z])", f)]  # an upper-case letter comes first
    if found:
        rest = found[-1]
        head = re.match(r"\S+", rest).group(0).rstrip(",;*")
        tail = rest[len(head):]
        if re.match(rf"\s*(?:or|and|/|,|&|oder|ou|o|y|e|et|und)\s*[(\[]?[{letters}](?![A-Za-z])", tail):
            return None  # "A or B", "A, C": ambiguous
        return _letter_of(head, letters)
    return _letter_of(completion, letters)
