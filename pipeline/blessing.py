"""The blessing: whether a candidate model may be published, and why.

In:  the evaluate stage's metrics (skill over persistence and its interval,
     band coverage and its interval), the comparison with the published
     version (or None) and params `evaluate.*` (`margin`, `tolerance`,
     `coverage_goal`).
Out: (blessed, reason), one sentence per criterion.

The evaluate stage decides and records the blessing; the export stage obeys
it. One test split is one draw of the weather, so each criterion refuses only
when its whole interval lies on the wrong side (see pipeline.evaluate for how
the intervals are drawn): a good model is not refused by chance, a clearly
worse one still is.
"""


def persistence_verdict(metrics: dict, margin: float) -> tuple[bool, str]:
    """Refused only when the skill over persistence is clearly (its whole interval) short of `margin`."""
    skill, (low, high) = metrics["skill_vs_persistence"], metrics["skill_interval"]
    said = (
        f"test MAE {metrics['test_mae_degC']:.3f} C against persistence's {metrics['persistence_mae_degC']:.3f} C "
        f"is a skill of {skill:.1%} (interval {low:.1%} to {high:.1%})"
    )
    if high < margin:
        return False, f"{said}: clearly short of the margin {margin:.0%}"
    return True, f"{said}: {'meets' if skill >= margin else 'within sampling noise of'} the margin {margin:.0%}"


def coverage_verdict(coverage: float, interval, goal) -> tuple[bool, str]:
    """Refused only when the band's coverage is clearly (its whole interval) outside `goal` [low, high]."""
    low, high = goal
    said = f"band coverage {coverage:.1%} (interval {interval[0]:.1%} to {interval[1]:.1%})"
    if interval[1] < low or interval[0] > high:
        return False, f"{said} clearly outside the goal {low:.0%}-{high:.0%}"
    return True, f"{said} {'within' if low <= coverage <= high else 'consistent with'} the goal {low:.0%}-{high:.0%}"


def published_verdict(published: dict | None, tolerance: float) -> tuple[bool, str]:
    """Refused when the published version is not comparable, or when this model is clearly worse than it
    by more than `tolerance` on the same samples: the paired difference's whole interval above it (a
    recorded MAE without per-sample errors gives no interval: then the difference itself counts)."""
    if published is None:
        return True, "no model is published yet"
    version = published["version"]
    if published.get("not_comparable"):
        return False, f"published version {version} {published['not_comparable']}"
    ours, theirs = published["model_mae_degC"], published["mae_degC"]
    low, high = published.get("mae_difference_interval") or [ours - theirs] * 2
    said = (
        f"MAE {ours:.3f} C on the same {published['samples']} test samples against published version "
        f"{version}'s {theirs:.3f} C (difference {ours - theirs:+.3f} C, interval {low:+.3f} to {high:+.3f} C)"
    )
    if low > tolerance:
        return False, f"{said} is clearly worse by more than the tolerance of {tolerance:.3f} C"
    return True, f"{said} is not clearly worse by more than {tolerance:.3f} C"


def bless(metrics: dict, published: dict | None, evaluate_params: dict) -> tuple[bool, str]:
    """The export gate: (blessed, reason), from the metrics and their intervals, the comparison with the
    published version (`compare_with_version`, or None) and `evaluate.*` (margin, tolerance, coverage_goal)."""
    verdicts = [
        persistence_verdict(metrics, evaluate_params["margin"]),
        published_verdict(published, evaluate_params["tolerance"]),
    ]
    if "band_coverage" in metrics:
        verdicts.append(
            coverage_verdict(
                metrics["band_coverage"], metrics["band_coverage_interval"], evaluate_params["coverage_goal"]
            )
        )
    return all(passed for passed, _ in verdicts), "; ".join(reason for _, reason in verdicts)
