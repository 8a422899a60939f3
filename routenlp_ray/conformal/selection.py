"""Which uncertainty score each task uses, as the cascade config says."""

from __future__ import annotations

from routenlp_ray.config.cascade import CascadeConfig
from routenlp_ray.conformal.scores import UncertaintyScore, get_uncertainty_score


class TaskScores:
    """Resolves ``cascade.uncertainty_for(task)`` to a callable; the learned scorer is loaded once."""

    def __init__(self, cascade: CascadeConfig) -> None:
        self.cascade = cascade
        self._learned: UncertaintyScore | None = None
        names = {cascade.uncertainty, *cascade.uncertainty_per_task.values()}
        if "learned" in names:
            from routenlp_ray.conformal.answer_scorer import LearnedAnswerScorer

            assert cascade.answer_scorer_path is not None  # the config validator guarantees it
            self._learned = LearnedAnswerScorer.load(cascade.answer_scorer_path)

    def name_for(self, task: str) -> str:
        return self.cascade.uncertainty_for(task)

    def for_task(self, task: str) -> UncertaintyScore:
        name = self.name_for(task)
        if name == "learned":
            assert self._learned is not None
            return self._learned
        return get_uncertainty_score(name)
