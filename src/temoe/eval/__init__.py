"""Evaluation: task objects, pure graders, batched generation runner and summary statistics (METHOD §5)."""

from temoe.eval.graders import extract_boxed, extract_choice, is_equiv, last_boxed_only_string

__all__ = ["is_equiv", "extract_boxed", "extract_choice", "last_boxed_only_string"]
