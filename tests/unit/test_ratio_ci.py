"""One rule for the targeted/untargeted ratio's CI, and each bench's renderer of its older reports."""

from __future__ import annotations

from routenlp_ray.bench.loop_experiment_report import _ratio_ci as loop_experiment_ratio_ci
from routenlp_ray.bench.loop_specialist_report import _ratio_ci as loop_specialist_ratio_ci
from routenlp_ray.bench.ratio_ci import extended_ratio, point_ratio, ratio_interval, ratio_is_informative


def test_a_draw_without_an_untargeted_gain_is_unbounded_in_the_direction_targeted_went() -> None:
    assert extended_ratio(0.2, 0.1) == 2.0
    assert extended_ratio(0.2, 0.0) == float("inf") and extended_ratio(0.2, -0.1) == float("inf")
    assert extended_ratio(0.0, 0.0) == float("-inf") and extended_ratio(-0.1, -0.1) == float("-inf")


def test_the_interval_is_json_safe_and_read_back_as_floats() -> None:
    ends = ratio_interval([float("-inf")] * 5 + [1.0] * 90 + [float("inf")] * 5)
    assert ends == ["-inf", "inf"]
    assert ratio_interval([1.0] * 97 + [float("inf")] * 3) == [1.0, "inf"]


def test_a_ratio_means_something_only_when_its_ci_is_above_zero_and_bounded() -> None:
    assert ratio_is_informative({"ratio_ci95": [1.1, 3.0]})
    assert not ratio_is_informative({"ratio_ci95": [1.1, "inf"]})  # untargeted ≤ 0 in ≥ 2.5% of draws
    assert not ratio_is_informative({"ratio_ci95": ["-inf", 3.0]})
    assert not ratio_is_informative({"ratio_ci95": [-0.2, 3.0]}) and not ratio_is_informative({"ratio_ci95": None})


def test_loop_reports_render_both_rules() -> None:
    current = {"ratio_ci95": [1.2, "inf"], "ratio_ci_rule": "all_draws", "untargeted_at_most_zero_share": 0.05}
    assert loop_specialist_ratio_ci(current) == loop_experiment_ratio_ci(current) == "[1.20, ∞) (untargeted ≤ 0 in 5% of draws)"
    older = {"ratio_ci95": [-0.5, 2.25]}  # made when only the draws with u == 0 were dropped
    assert loop_specialist_ratio_ci(older) == "[-0.50, 2.25]"
    assert loop_experiment_ratio_ci(older) == "[-0.50, +2.25]"
    assert loop_specialist_ratio_ci({"ratio_ci95": None}, missing="–") == "–"


def test_two_losses_have_no_ratio() -> None:
    assert point_ratio(0.2, 0.1) == 2.0
    assert point_ratio(-0.13, -0.08) is None and point_ratio(0.1, 0.0) is None
