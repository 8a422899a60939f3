"""The teacher's answers: what the frontier tier says to each training query, as distillation pairs.

:func:`frontier_pairs` feeds the specialist heads; :func:`frontier_examples` feeds a LoRA
student, as chat messages the student tier is sent and the answer it should give.
"""

from __future__ import annotations

from typing import Any

from routenlp_ray.engines.base import generate_isolating_failures, task_request
from routenlp_ray.loop.distill import DistillExample
from routenlp_ray.specialists.artifact import HeadKind
from routenlp_ray.specialists.training import TaskPairs

__all__ = ["frontier_answers", "frontier_examples", "frontier_pairs"]


def frontier_answers(
    teacher: Any, task: Any, texts: list[str], batch_size: int = 32, max_tokens: int = 256
) -> tuple[list[str], list[str], int]:
    """Ask ``teacher`` (the frontier tier's engine) for its answer to each text of ``task``.

    Requests are built and batched exactly as ``routenlp record`` builds them. Returns the texts
    that got an answer, their answers, and how many got none (a replay miss, an API error);
    those are left out rather than guessed. ``task`` is the task's :class:`~routenlp_ray.tasks.TaskSpec`.
    """
    kept_texts, answers, missing = [], [], 0
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        requests = [task_request(task, f"distil-{start + i}", text, max_tokens) for i, text in enumerate(chunk)]
        for text, output in zip(chunk, generate_isolating_failures(teacher, requests)):
            if isinstance(output, BaseException) or not output.text.strip():
                missing += 1
                continue
            kept_texts.append(text)
            answers.append(output.text)
    return kept_texts, answers, missing


def frontier_pairs(
    teacher: Any, task: Any, kind: HeadKind, texts: list[str], batch_size: int = 32, max_tokens: int = 256
) -> tuple[TaskPairs, int]:
    """The frontier's answers to ``texts`` as a specialist head's training pairs, and how many got none."""
    kept_texts, answers, missing = frontier_answers(teacher, task, texts, batch_size, max_tokens)
    return TaskPairs(kind=kind, texts=kept_texts, answers=answers), missing


def frontier_examples(
    teacher: Any, task: Any, texts: list[str], batch_size: int = 32, max_tokens: int = 256
) -> tuple[list[DistillExample], int]:
    """The frontier's answers to ``texts`` as LoRA-student examples (task prompt applied), and how many got none."""
    kept_texts, answers, missing = frontier_answers(teacher, task, texts, batch_size, max_tokens)
    return [DistillExample.for_task(task, text, answer) for text, answer in zip(kept_texts, answers)], missing
