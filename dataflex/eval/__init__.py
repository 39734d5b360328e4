"""Batched evaluation (MCQ accuracy, exact match, perplexity) run before and after training."""

from .suite import format_table, run_eval_suite

__all__ = ["format_table", "run_eval_suite"]
