"""The blessing (pipeline/blessing.py): each criterion refuses only when its whole interval lies on the wrong
side, so that chance refuses no good model and a clearly worse one is still refused."""

import numpy as np
import pandas as pd
import pytest

from pipeline.blessing import bless, coverage_verdict
from pipeline.evaluate import sampling_intervals
from pipeline.scores import sample_days
from tests.helpers.training import EVALUATE_PARAMS


def judged(skill: float, skill_interval, coverage=None, coverage_interval=None) -> dict:
    """Metrics as bless reads them: a test MAE of 2 C against persistence's, with the given skill."""
    metrics = {
        "test_mae_degC": 2.0 * (1 - skill),
        "persistence_mae_degC": 2.0,
        "skill_vs_persistence": skill,
        "skill_interval": list(skill_interval),
    }
    if coverage is not None:
        metrics.update(band_coverage=coverage, band_coverage_interval=list(coverage_interval))
    return metrics


@pytest.mark.parametrize(
    "skill,interval,expected,said",
    [
        (0.10, (0.08, 0.12), True, "meets the margin 5%"),
        (0.04, (0.02, 0.06), True, "within sampling noise of the margin 5%"),
        (0.03, (0.01, 0.049), False, "clearly short of the margin 5%"),
    ],
)
def test_blessing_refuses_a_skill_over_persistence_only_when_clearly_short_of_the_margin(
    skill, interval, expected, said
):
    blessed, reason = bless(judged(skill, interval), None, EVALUATE_PARAMS)
    assert blessed is expected and said in reason and "no model is published yet" in reason
    assert f"skill of {skill:.1%} (interval {interval[0]:.1%} to {interval[1]:.1%})" in reason


def side_by_side(model_mae: float, published_mae: float, version: int = 3, interval=None) -> dict:
    return {
        "version": version,
        "model_mae_degC": model_mae,
        "mae_degC": published_mae,
        "samples": 100,
        "mae_difference_interval": interval,
    }


@pytest.mark.parametrize(
    "model_mae,interval,expected",
    [
        (1.5, (-0.1, 0.1), True),
        (1.6, (0.02, 0.18), True),  # worse by 0.1 C, but not clearly by more than 0.05 C
        (1.6, (0.06, 0.14), False),  # clearly worse by more than 0.05 C
        (1.54, None, True),  # a recorded MAE without errors: the difference itself
        (1.56, None, False),
    ],
)
def test_blessing_refuses_only_a_model_clearly_worse_than_the_published_one(model_mae, interval, expected):
    blessed, reason = bless(judged(0.5, (0.4, 0.6)), side_by_side(model_mae, 1.5, interval=interval), EVALUATE_PARAMS)
    assert blessed is expected
    assert "on the same 100 test samples" in reason and "published version 3's 1.500 C" in reason
    assert ("clearly worse by more than the tolerance of 0.050 C" in reason) is not expected


def test_blessing_checks_persistence_even_when_better_than_published():
    blessed, reason = bless(judged(0.02, (0.0, 0.04)), side_by_side(1.95, 2.5, interval=(-0.6, -0.5)), EVALUATE_PARAMS)
    assert not blessed and "clearly short of the margin" in reason


def test_a_published_model_of_another_horizon_is_not_comparable():
    published = {**side_by_side(None, None), "not_comparable": "forecasts 12 h ahead, this model 24 h: not comparable"}
    blessed, reason = bless(judged(0.5, (0.4, 0.6)), published, EVALUATE_PARAMS)
    assert not blessed and "published version 3 forecasts 12 h ahead" in reason


def simulated_test_split(rng, coverage: float, days: int = 360):
    """Hourly forecasts for `days` days whose misses come in multi-day spells (weather regimes): the true
    share of hours in the band is `coverage`, but one test split sees far more or fewer misses."""
    regime = np.zeros(days)
    for day in range(1, days):
        regime[day] = 0.8 * regime[day - 1] + rng.normal(0, 1)
    hourly = np.repeat(regime, 24) / np.sqrt(1 / (1 - 0.8**2)) * 0.8 + rng.normal(0, 0.6, days * 24)
    threshold = np.quantile(rng.normal(0, 1, 200_000), coverage)  # the sum above has variance 1
    in_band = (hourly < threshold)[:, None]
    when = pd.date_range("2015-01-01", periods=days * 24, freq="h").as_unit("s").asi8
    return sample_days(when), in_band


def test_coverage_intervals_refuse_a_clearly_bad_band_and_not_a_good_one_by_chance():
    """40 test splits of a band that truly holds 80 %: the fixed 78-82 % window refuses many of them, the
    interval rule few; a band that truly holds 60 % is refused every time."""
    rng = np.random.default_rng(3)
    errors = np.ones(360 * 24)
    fixed_refusals = interval_refusals = bad_refusals = 0
    for trial in range(40):
        days, in_band = simulated_test_split(rng, 0.8)
        coverage = in_band.mean()
        interval = sampling_intervals(days, errors * 0.9, errors, in_band, EVALUATE_PARAMS, seed=trial)
        fixed_refusals += not 0.78 <= coverage <= 0.82
        interval_refusals += not bless(
            judged(0.1, (0.05, 0.15), coverage, interval["band_coverage_interval"]), None, EVALUATE_PARAMS
        )[0]
        days, in_band = simulated_test_split(rng, 0.6)
        interval = sampling_intervals(days, errors * 0.9, errors, in_band, EVALUATE_PARAMS, seed=trial)
        bad_refusals += not bless(
            judged(0.1, (0.05, 0.15), in_band.mean(), interval["band_coverage_interval"]), None, EVALUATE_PARAMS
        )[0]
    assert fixed_refusals >= 10 and interval_refusals <= 4 and bad_refusals == 40


@pytest.mark.parametrize(
    "coverage,interval,expected,said",
    [
        (0.80, (0.77, 0.83), True, "within"),
        (0.825, (0.80, 0.85), True, "consistent with"),
        (0.76, (0.74, 0.779), False, "clearly outside"),
        (0.86, (0.821, 0.90), False, "clearly outside"),
    ],
)
def test_coverage_verdict(coverage, interval, expected, said):
    covered, reason = coverage_verdict(coverage, interval, [0.78, 0.82])
    assert covered is expected and f"{coverage:.1%}" in reason and f"{said} the goal 78%-82%" in reason
