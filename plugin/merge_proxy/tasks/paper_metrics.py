"""The reference protocol's tolerant metrics for chartqa, pope and CV-Bench's Count questions.

lmms-eval loads this file by path for the ``!function paper_metrics.NAME`` entries of the YAML files
beside it. Each ``process_results`` returns the stock task's metrics unchanged plus the tolerant one,
computed as the reference computes it (including its quirks: "Answer:" is removed but the space after
it is kept, so "Answer: 3" matches no option text).
"""

from __future__ import annotations

from typing import Any

from lmms_eval.tasks.chartqa.utils import chartqa_doc_to_text, chartqa_doc_to_visual  # noqa: F401 (used by YAML)
from lmms_eval.tasks.chartqa.utils import chartqa_process_results, relaxed_correctness
from lmms_eval.tasks.cv_bench.utils import _extract_answer_letter, cv_bench_doc_to_text, cv_bench_doc_to_visual  # noqa: F401
from lmms_eval.tasks.pope.utils import (  # noqa: F401 (used by YAML)
    pope_aggregate_accuracy,
    pope_aggregate_f1_score,
    pope_aggregate_precision,
    pope_aggregate_recall,
    pope_aggregate_yes_ratio,
    pope_doc_to_text,
    pope_doc_to_visual,
    pope_process_results,
)


def chartqa_soft_process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """The stock metrics plus ``relaxed_overall_soft``: the answer without trailing dots ("12." is 12)."""
    scores = chartqa_process_results(doc, results)
    scores["relaxed_overall_soft"] = 1.0 if relaxed_correctness(results[0].rstrip("."), doc["answer"]) else 0.0
    return scores


def pope_first_word(response: str) -> str:
    """The answer as the reference's ``pope_accuracy_soft`` reads it: its first word, lower case,
    without trailing ".:," ("Yes, there is a dog." is "yes")."""
    words = response.lower().split()
    return words[0].rstrip(".:,") if words else ""


def pope_soft_process_results(doc: dict[str, Any], results: list[str]) -> dict[str, dict[str, Any]]:
    """The stock metrics plus ``pope_accuracy_soft`` (the first word against yes/no)."""
    scores = pope_process_results(doc, results)
    truth = doc["answer"].lower().strip()
    soft = pope_first_word(results[0])
    scores["pope_accuracy_soft"] = {
        "question_id": doc["question_id"], "score": 1.0 if soft == truth else 0.0, "prediction": soft,
        "ground_truth": truth,
    }
    return scores


def count_questions(dataset):
    """CV-Bench 2D's Count questions: the reference scores only those (its Relation questions are
    generated and then dropped by the aggregation; not generating them gives the same score)."""
    return dataset.filter(lambda doc: doc["task"] == "Count")


def cv_bench_letter_softer(response: str, choices: list[str]) -> str:
    """The option letter as ``count_acc_softer`` reads it: "Answer:" removed; a reply that is exactly an
    option's text is that option; otherwise the leading letter, as the stock task parses it."""
    response = response.replace("Answer:", "")
    if response in choices:
        return chr(ord("A") + choices.index(response))
    return _extract_answer_letter(response)


def cv_bench_count_process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """``count_acc_softer`` (the reference's) and ``count_acc`` (the stock letter parsing), per question."""
    truth = doc["answer"].strip("()")
    return {
        "count_acc_softer": 1.0 if cv_bench_letter_softer(results[0], list(doc["choices"])) == truth else 0.0,
        "count_acc": 1.0 if _extract_answer_letter(results[0]) == truth else 0.0,
    }
