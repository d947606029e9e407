"""Evaluation tasks: a list of items, a prompt per item and a pure grader, loaded from local files only.

Tasks (`TASKS`): the embedded sets `math`, `mc`, `mc-multilingual` (shipped JSONL, the prompt format the
embedded model was pretrained on) and the local-file benchmarks `hendrycks-math`, `mmlu`, `mmmlu`
(the paper's §5), read from the layouts users have on disk; never from the network. Subsampling follows the
paper: the pool is read in a fixed (sorted-file) order and `random.Random(seed).sample(pool, limit)` draws
`limit` items (§5: 200 questions, seed 42).
"""

from __future__ import annotations

import csv
import json
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temoe.eval.graders import MATH_GRADERS, extract_boxed, extract_choice, extract_math_answer, is_equiv

__all__ = ["TASKS", "LOCAL_FILE_TASKS", "Task", "load_task", "MATH_INSTRUCTION", "MC_INSTRUCTION"]

EMBEDDED_TASKS = ("math", "mc", "mc-multilingual")
LOCAL_FILE_TASKS = ("hendrycks-math", "mmlu", "mmmlu")
TASKS = EMBEDDED_TASKS + LOCAL_FILE_TASKS
LETTERS = "ABCD"

#: Instruction of the local-file MATH prompt (paraphrasing the paper's eval prompt, asking for \boxed{}).
MATH_INSTRUCTION = (
    "Solve the following math problem step by step. "
    "Put your final answer within \\boxed{}, for example: the answer is \\boxed{42}."
)
#: Instruction of the local-file MMLU / MMMLU prompt (the paper's <answer> tag convention).
MC_INSTRUCTION = (
    "Answer the following multiple-choice question. Reason step by step, then give the letter of the "
    "correct option inside answer tags, for example: <answer>B</answer>."
)


@dataclass(frozen=True)
class Task:
    """A benchmark: items, how to prompt them, how to grade a completion.

    `items` are dicts with at least `id`, `question` and `answer` (MC items also `choices`, a list of 4).
    `kind` is "math" (graded with `is_equiv`) or "mc" (strict letter extraction). `chat`: wrap the prompt
    in the tokenizer's chat template when it has one (local-file benchmarks; the embedded model has none).
    `stop`: strings that end a completion (the completion is cut before them). `answer_prefix` is prepended
    to the completion before grading when the prompt already ends with the answer cue (embedded MC prompts
    end in "Answer:" and the model continues with " B"). `grader` (math only): "official" compares answers
    after Hendrycks et al.'s normalisation alone, "lenient" adds the extensions of `temoe.eval.graders`.
    """

    name: str
    kind: str
    items: list[dict]
    format_prompt: Callable[[Mapping[str, Any]], str]
    chat: bool = False
    stop: tuple[str, ...] = ()
    answer_prefix: str = ""
    meta: dict = field(default_factory=dict)
    grader: str = "lenient"

    def prompt(self, item: Mapping[str, Any]) -> str:
        """The prompt text of one item (before any chat template)."""
        return self.format_prompt(item)

    def truncate(self, completion: str) -> str:
        """The completion cut at the first stop string."""
        cut = len(completion)
        for s in self.stop:
            j = completion.find(s)
            if j >= 0:
                cut = min(cut, j)
        return completion[:cut]

    def grade(self, completion: str, item: Mapping[str, Any]) -> tuple[str | None, bool]:
        """(prediction, correct) for a completion (already truncated) of `item`. Pure."""
        return grade(self.kind, self.answer_prefix + completion, item["answer"], self.grader)


def grade(kind: str, text: str, answer: str, grader: str = "lenient") -> tuple[str | None, bool]:
    """Pure grader: MATH -> `is_equiv(extract_math_answer(text), answer)` with the `grader`'s normalisation;
    MC -> strict letter == answer."""
    if kind == "math":
        pred = extract_math_answer(text)
        return pred, is_equiv(pred, answer, official=grader == "official")
    if kind == "mc":
        pred = extract_choice(text, LETTERS)
        return pred, pred is not None and pred == answer
    raise ValueError(f"unknown task kind {kind!r}; valid: math, mc")


# ----------------------------------------------------------------------------- loading

def load_task(name: str, data: str | Path | None = None, limit: int | None = 200, seed: int = 42,
              grader: str | None = None) -> Task:
    """Load task `name` (one of `TASKS`), subsampled to `limit` items with `random.Random(seed)`.

    `data` is required for the local-file tasks (a file or a directory, see the `_read_*` functions) and
    ignored for the embedded ones. `limit=None` or a limit ≥ the pool keeps every item (in file order).
    `grader` (one of `MATH_GRADERS`; math tasks): None = "official" for `hendrycks-math`, as the paper
    grades MATH, and "lenient" for the embedded `math`.
    """
    if grader is None:
        grader = "official" if name == "hendrycks-math" else "lenient"
    if grader not in MATH_GRADERS:
        raise ValueError(f"unknown grader {grader!r}; valid: {', '.join(MATH_GRADERS)}")
    if name in EMBEDDED_TASKS:
        items, task = _embedded(name)
    elif name in LOCAL_FILE_TASKS:
        if data is None:
            raise ValueError(f"task {name!r} reads local files: pass data=PATH (CLI: --data PATH)")
        path = Path(data)
        if not path.exists():
            raise FileNotFoundError(f"data path {str(path)!r} for task {name!r} does not exist")
        items, task = {"hendrycks-math": _hendrycks_math, "mmlu": _mmlu, "mmmlu": _mmmlu}[name](path)
    else:
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(TASKS)}")
    if not items:
        raise ValueError(f"task {name!r} found no items in {data!r}")
    pool_size = len(items)
    if limit is not None:
        if limit <= 0:
            raise ValueError(f"limit must be positive, got {limit}")
        if limit < len(items):
            items = random.Random(seed).sample(items, limit)
    meta = {"pool_size": pool_size, "seed": seed, "data": None if data is None else str(data)}
    return Task(name=name, items=items, meta=meta, grader=grader, **task)


def _embedded(name: str) -> tuple[list[dict], dict]:
    from temoe.embedded import data_path
    from temoe.embedded.tasks import format_prompt

    file, kind, etask = {
        "math": ("math_test.jsonl", "math", "math"),
        "mc": ("mc_test.jsonl", "mc", "mc"),
        "mc-multilingual": ("mc_multilingual_test.jsonl", "mc", "mc_multilingual"),
    }[name]
    items = []
    for i, row in enumerate(_read_jsonl(Path(data_path(file)))):
        item = dict(row)
        item.setdefault("id", f"{name}-{i}")
        item["answer"] = str(item["answer"])
        items.append(item)
    # The embedded documents are "<prompt> <answer>" followed by EOS or the next document.
    spec = dict(kind=kind, format_prompt=lambda item, t=etask: format_prompt(item, t), chat=False,
                stop=("\nProblem:", "\nQuestion:", "\n\n"), answer_prefix="Answer:" if kind == "mc" else "")
    return items, spec


def _math_prompt(item: Mapping[str, Any]) -> str:
    return f"{MATH_INSTRUCTION}\n\nProblem: {item['question']}\n\nSolution:"


def _mc_prompt(item: Mapping[str, Any]) -> str:
    options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(item["choices"]))
    return f"{MC_INSTRUCTION}\n\nQuestion: {item['question']}\n{options}\n\nAnswer:"


def _hendrycks_math(path: Path) -> tuple[list[dict], dict]:
    """MATH from a JSONL/JSON/parquet file, or a directory of them (`hendrycks_math/<subject>/test-*.parquet`,
    the original `MATH/test/<subject>/<n>.json` files), or a `datasets.save_to_disk` directory.

    Rows need `problem` and either `answer` or `solution` (the reference answer is then the last `\\boxed{}`
    of the solution, as Hendrycks et al. grade it). Directories use files whose path contains "test" when
    there are any (the train split is skipped).
    """
    rows = _read_rows(path, prefer="test")
    items = []
    for i, r in enumerate(rows):
        answer = r.get("answer")
        if answer is None:
            answer = extract_boxed(r.get("solution", "") or "")
        if answer is None or "problem" not in r:
            continue  # no reference answer: the item cannot be graded (never counted as correct)
        id_ = r.get("id") or r.get("unique_id") or f"{r.get('_file', 'math')}:{r.get('_row', i)}"
        items.append({"id": id_,
                      "question": r["problem"], "answer": str(answer), "level": r.get("level"),
                      "subject": r.get("type") or r.get("subject")})
    return items, dict(kind="math", format_prompt=_math_prompt, chat=True)


def _mc_item(question: str, choices: Sequence[str], answer: Any, id_: str, **extra: Any) -> dict:
    if len(choices) != 4:
        raise ValueError(f"item {id_} has {len(choices)} choices; MMLU-style tasks need 4")
    if isinstance(answer, (int,)) or (isinstance(answer, str) and answer.strip().isdigit()):
        answer = LETTERS[int(answer)]
    answer = str(answer).strip().upper()
    if answer not in LETTERS:
        raise ValueError(f"item {id_} has answer {answer!r}; expected one of {LETTERS} or 0-3")
    return {"id": id_, "question": question, "choices": [str(c) for c in choices], "answer": answer, **extra}


def _mmlu(path: Path) -> tuple[list[dict], dict]:
    """MMLU from the `cais/mmlu` layout (`<subject>/test-*.parquet`, columns question/subject/choices/answer;
    `all/` and `auxiliary_train/` are skipped when per-subject folders exist), the original CSV layout
    (`data/test/<subject>_test.csv`, no header: question, A, B, C, D, answer), or JSONL with
    question/choices/answer.
    """
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".parquet", ".csv", ".jsonl")
                       and "test" in str(p.relative_to(path)))
        per_subject = [p for p in files if not {"all", "auxiliary_train"} & set(p.relative_to(path).parts)]
        files = per_subject or files
    else:
        files = [path]
    items = []
    for f in files:
        if f.suffix == ".csv":
            with open(f, newline="", encoding="utf-8") as fh:
                for j, row in enumerate(csv.reader(fh)):
                    if len(row) < 6:
                        continue
                    subject = re.sub(r"_test$", "", f.stem)
                    items.append(_mc_item(row[0], row[1:5], row[5], f"{subject}:{j}", subject=subject))
        else:
            for j, r in enumerate(_read_file(f)):
                subject = r.get("subject") or f.parent.name
                items.append(_mc_item(r["question"], list(r["choices"]), r["answer"],
                                      str(r.get("id") or f"{subject}:{j}"), subject=subject))
    return items, dict(kind="mc", format_prompt=_mc_prompt, chat=True)


def _mmmlu(path: Path) -> tuple[list[dict], dict]:
    """MMMLU from the `openai/MMMLU` layout: `test/mmlu_<LANG>.csv` files (header ,Question,A,B,C,D,Answer,
    Subject), pooled over languages (`lang` from the file name), or one such CSV file."""
    files = sorted(path.rglob("*.csv")) if path.is_dir() else [path]
    items = []
    for f in files:
        lang = f.stem.removeprefix("mmlu_")
        with open(f, newline="", encoding="utf-8") as fh:
            for j, r in enumerate(csv.DictReader(fh)):
                items.append(_mc_item(r["Question"], [r["A"], r["B"], r["C"], r["D"]], r["Answer"],
                                      f"{lang}:{r.get('') or j}", subject=r.get("Subject"), lang=lang))
    return items, dict(kind="mc", format_prompt=_mc_prompt, chat=True)


# ----------------------------------------------------------------------------- file readers

def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _read_file(path: Path) -> list[dict]:
    """Rows of one .jsonl / .json (a list, or one object) / .parquet / .arrow file."""
    if path.suffix == ".jsonl":
        return _read_jsonl(path)
    if path.suffix == ".json":
        obj = json.loads(path.read_text(encoding="utf-8"))
        return obj if isinstance(obj, list) else [obj]
    if path.suffix in (".parquet", ".arrow"):
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as err:
            raise ImportError("reading parquet/arrow files needs pyarrow: pip install 'temoe[eval]'") from err
        if path.suffix == ".parquet":
            return pq.read_table(path).to_pylist()
        with pa.memory_map(str(path)) as source:  # datasets.save_to_disk writes arrow IPC streams
            return pa.ipc.open_stream(source).read_all().to_pylist()
    raise ValueError(f"unsupported data file {str(path)!r}; expected .jsonl, .json, .parquet or .arrow")


def _read_rows(path: Path, prefer: str) -> list[dict]:
    """Rows of a file or of every supported file under a directory (sorted; `prefer` split if present)."""
    if path.is_file():
        files = [path]
    else:
        files = sorted(p for p in path.rglob("*") if p.suffix in (".jsonl", ".json", ".parquet", ".arrow")
                       and p.name not in ("dataset_info.json", "state.json", "dataset_dict.json"))
        preferred = [p for p in files if prefer in str(p.relative_to(path))]
        files = preferred or files
    rows = []
    for f in files:
        name = f.stem if path.is_file() else str(f.relative_to(path).with_suffix(""))
        for j, r in enumerate(_read_file(f)):
            rows.append({**r, "_file": name, "_row": j})
    return rows
