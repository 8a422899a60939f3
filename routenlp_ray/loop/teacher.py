"""The teacher's answers: what the frontier tier says to each training query, as distillation pairs."""

from __future__ import annotations

from typing import Any

from routenlp_ray.engines.base import generate_isolating_failures, task_request
from routenlp_ray.specialists.artifact import HeadKind
from routenlp_ray.specialists.training import TaskPairs

__all__ = ["frontier_pairs"]


def frontier_pairs(
    teacher: Any, task: Any, kind: HeadKind, texts: list[str], batch_size: int = 32, max_tokens: int = 256
) -> tuple[TaskPairs, int]:
    """Ask ``teacher`` (the frontier tier's engine) for its answer to each text of ``task``.

    Requests are built and batched exactly as ``routenlp record`` builds them. Returns the pairs
    and how many texts got no answer (a replay miss, an API error); those are left out rather
    than guessed. ``task`` is the task's :class:`~routenlp_ray.tasks.TaskSpec`.
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
    return TaskPairs(kind=kind, texts=kept_texts, answers=answers), missing
