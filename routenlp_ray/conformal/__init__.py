"""Uncertainty scores and split-conformal acceptance thresholds."""

from routenlp_ray.conformal.calibrator import ConformalCalibrator
from routenlp_ray.conformal.scores import (
    UNCERTAINTY_SCORES,
    AnswerEvidence,
    get_uncertainty_score,
    max_nll,
    mean_nll,
    one_minus_min_prob,
    topk_entropy,
)
from routenlp_ray.conformal.thresholds import ThresholdTable

__all__ = [
    "AnswerEvidence",
    "ConformalCalibrator",
    "ThresholdTable",
    "UNCERTAINTY_SCORES",
    "get_uncertainty_score",
    "max_nll",
    "mean_nll",
    "one_minus_min_prob",
    "topk_entropy",
]
