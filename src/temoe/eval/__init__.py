"""Evaluation: task objects, pure graders, evaluation runs with one record per question (paper §5)."""

from temoe.eval.graders import extract_boxed, extract_choice, is_equiv, last_boxed_only_string

__all__ = ["is_equiv", "extract_boxed", "extract_choice", "last_boxed_only_string"]
