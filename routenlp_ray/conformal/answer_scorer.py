"""A learned uncertainty score: the predicted probability that an answer is wrong.

It reads the query, the answer and the task, not logprobs, so it scores tiers that return
none: hosted APIs, replays, tiers behind a gateway. Features are the MiniLM embeddings of
the query and of the answer, their elementwise product (does the answer fit the query?),
the task, and the answer's length; a logistic regression maps them to P(wrong). Split-
conformal calibration only needs the score to rank answers, so the probability need not be
perfectly calibrated for the guarantee to hold.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import joblib
import numpy as np
from sklearn.linear_model import LogisticRegression

from routenlp_ray._exceptions import ArtifactError, NotFittedError
from routenlp_ray.conformal.scores import AnswerEvidence

FORMAT_VERSION = 1
UNKNOWN_TASK = "<unk>"


class TextEncoder(Protocol):
    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


class LearnedAnswerScorer:
    """scikit-learn style: ``fit(evidence, correct)``, ``predict_proba``, ``score``; ``save`` / ``load``.

    ``score`` returns P(wrong) per answer, the uncertainty the cascade thresholds.
    """

    def __init__(self, encoder: TextEncoder | None = None, C: float = 1.0, quantize: bool = True) -> None:
        self.C = C
        self.quantize = quantize
        self._encoder = encoder

    @property
    def encoder(self) -> TextEncoder:
        if self._encoder is None:
            from routenlp_ray.models.encoder import SentenceEncoder

            self._encoder = SentenceEncoder(quantize=self.quantize)
        return self._encoder

    # -- fitting --------------------------------------------------------------------------
    def fit(self, evidence: Sequence[AnswerEvidence], correct: Sequence[bool]) -> "LearnedAnswerScorer":
        labels = np.asarray(correct, dtype=bool)
        if len(evidence) != len(labels):
            raise ValueError(f"got {len(evidence)} answers but {len(labels)} labels")
        if labels.all() or not labels.any():
            raise ValueError("the answer scorer needs both right and wrong answers to learn from")
        self.tasks_ = sorted({e.task or UNKNOWN_TASK for e in evidence} | {UNKNOWN_TASK})
        self.model_ = LogisticRegression(C=self.C, max_iter=2000)
        self.model_.fit(self._features(evidence), ~labels)  # the positive class is "wrong"
        self.n_fitted_ = len(labels)
        return self

    def _features(self, evidence: Sequence[AnswerEvidence]) -> np.ndarray:
        queries = self.encoder.encode([e.query or "" for e in evidence])
        answers = self.encoder.encode([e.text or "" for e in evidence])
        task_index = {task: i for i, task in enumerate(self.tasks_)}
        tasks = np.zeros((len(evidence), len(self.tasks_)), dtype=np.float32)
        for row, e in enumerate(evidence):
            tasks[row, task_index.get(e.task or UNKNOWN_TASK, task_index[UNKNOWN_TASK])] = 1.0
        length = np.array([[math.log1p(len(e.text or ""))] for e in evidence], dtype=np.float32)
        empty = np.array([[0.0 if (e.text or "").strip() else 1.0] for e in evidence], dtype=np.float32)
        return np.hstack([queries, answers, queries * answers, tasks, length, empty])

    # -- prediction -----------------------------------------------------------------------
    def _check(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError("call fit before scoring answers")

    def predict_proba(self, evidence: Sequence[AnswerEvidence]) -> np.ndarray:
        """(n, 2): columns are P(right), P(wrong)."""
        self._check()
        if not evidence:
            return np.zeros((0, 2))
        return self.model_.predict_proba(self._features(evidence))

    def score(self, evidence: Sequence[AnswerEvidence]) -> np.ndarray:
        """P(wrong) per answer: the uncertainty u(m_k, x)."""
        return self.predict_proba(evidence)[:, 1]

    def __call__(self, evidence: AnswerEvidence) -> float:
        return float(self.score([evidence])[0])

    # -- persistence ----------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        self._check()
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        joblib.dump(self.model_, folder / "model.joblib")
        meta = {
            "format": FORMAT_VERSION,
            "kind": "learned_answer_scorer",
            "tasks": self.tasks_,
            "C": self.C,
            "quantize": self.quantize,
            "n_fitted": self.n_fitted_,
        }
        (folder / "scorer.json").write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, path: str | os.PathLike[str], encoder: TextEncoder | None = None) -> "LearnedAnswerScorer":
        folder = Path(path)
        try:
            meta: dict[str, Any] = json.loads((folder / "scorer.json").read_text())
            model = joblib.load(folder / "model.joblib")
        except FileNotFoundError as exc:
            raise ArtifactError(f"answer scorer artifact {str(folder)!r} is incomplete: {exc.filename} is missing") from None
        if meta.get("kind") != "learned_answer_scorer" or meta.get("format") != FORMAT_VERSION:
            raise ArtifactError(f"{str(folder)!r} is not a format-{FORMAT_VERSION} learned answer scorer")
        scorer = cls(encoder=encoder, C=meta["C"], quantize=meta["quantize"])
        scorer.model_, scorer.tasks_, scorer.n_fitted_ = model, meta["tasks"], meta["n_fitted"]
        return scorer
