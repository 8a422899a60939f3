"""How much live evidence says a (tier, task) breaks its promise: an anytime-valid test.

The monitor re-tests every cell every few seconds on a growing set of audits. A fixed-sample
test (a Wilson interval, a binomial p-value) repeated like that fires by chance sooner or
later: that is how 4 wrong answers in 38 once switched a tier off. The test here is a mixture
sequential probability ratio (Robbins' e-process): for ``n`` audits with ``failures`` of them
failures, the e-value is the likelihood of the data averaged over failure rates ``p`` above the
promised ``limit`` (uniform prior on ``[limit, 1]``), divided by its likelihood at ``limit``.
Under any rate at or below the limit it is a non-negative supermartingale, so by Ville's
inequality it ever reaches ``1 / level`` with probability at most ``level``, however often it is
looked at. The price is a little more evidence than a one-shot test needs: a rate of 10%
against a 4% budget is shown at 99% confidence after about 250 audits, a tier that is wrong
on everything after a dozen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from scipy.special import betaln
from scipy.stats import beta


def log_mixture_e_value(failures: ArrayLike, n: ArrayLike, limit: float) -> Any:
    """log of the e-value against H0 "failure rate <= limit"; 0 with no evidence.

    Takes counts or arrays of counts (one e-value per pair), as scipy's functions do.
    """
    if not 0 < limit < 1:
        raise ValueError(f"limit must be in (0, 1), got {limit}")
    s, total = np.asarray(failures, dtype=float), np.asarray(n, dtype=float)
    if np.any((s < 0) | (s > total)):
        raise ValueError(f"failures must be in [0, n], got failures={failures}, n={n}")
    passes = total - s
    log_mixture = betaln(s + 1, passes + 1) + beta.logsf(limit, s + 1, passes + 1) - math.log1p(-limit)
    log_null = s * math.log(limit) + passes * math.log1p(-limit)
    value = np.where(total > 0, log_mixture - log_null, 0.0)
    return float(value) if value.ndim == 0 else value


@dataclass(frozen=True)
class BreachTest:
    """The test of one (tier, task): H0 is "the promise holds" (failure rate <= ``limit``).

    ``what`` names the failure: a wrong answer accepted among all audited queries (quality
    rule), a wrong one among the accepted (risk), a right one turned away (coverage). The alarm
    is raised at ``level`` (1 - confidence, Bonferroni-split over the cells under test) once at
    least ``min_n`` audits are in.
    """

    what: str
    limit: float
    n: int
    failures: int
    level: float
    min_n: int

    @property
    def estimate(self) -> float | None:
        return self.failures / self.n if self.n else None

    @property
    def log_e_value(self) -> float:
        return log_mixture_e_value(self.failures, self.n, self.limit)

    @property
    def breached(self) -> bool:
        return self.n >= self.min_n and self.log_e_value >= math.log(1 / self.level)

    def evidence(self) -> dict[str, Any]:
        """What a log line or event needs to show why the monitor acted (or did not)."""
        return {
            "test": f"mixture SPRT, H0: {self.what} <= {self.limit:.4g}",
            "n": self.n,
            "failures": self.failures,
            "estimate": self.estimate,
            "log10_e_value": round(self.log_e_value / math.log(10), 3),
            "alarm_log10_e_value": round(math.log10(1 / self.level), 3),
            "min_n": self.min_n,
            "breached": self.breached,
        }
