"""The verification page: one self-contained HTML file, charts in inline SVG, no script, no network.

In:  a verification summary (forecast.verify.verification).
Out: `page`, HTML showing the drift alarms, the latest forecast (median and
     band) against the readings before and after it, each version's daily
     +24 h MAE (its test MAE dashed beside it) and band coverage (the goal
     shaded), and a table of every version's verified and blessed figures.
"""

import html

import pandas as pd

from forecast.scores import ALL

WIDTH, HEIGHT = 760, 260
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 28, 36
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
STYLE = """
body { font-family: sans-serif; margin: 24px; color: #222; max-width: 820px; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; }
table { border-collapse: collapse; font-size: 13px; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
.alarm { background: #fde2e2; border: 1px solid #d62728; padding: 6px 10px; margin: 4px 0; }
.ok { background: #e4f4e4; border: 1px solid #2ca02c; padding: 6px 10px; }
.note { color: #666; font-size: 13px; }
svg text { font-size: 11px; fill: #333; }
"""


def scale(values, low_pixel: float, high_pixel: float, padding: float = 0.05):
    """A function mapping the range of `values` (padded) onto [low_pixel, high_pixel], and that range."""
    values = [value for value in values if value is not None and value == value]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    if high == low:
        low, high = low - 0.5, high + 0.5
    low, high = low - (high - low) * padding, high + (high - low) * padding
    return (lambda value: low_pixel + (value - low) / (high - low) * (high_pixel - low_pixel)), (low, high)


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round values between low and high."""
    raw = (high - low) / count
    magnitude = 10 ** int(f"{raw:e}".split("e")[1])
    step = next(step * magnitude for step in (1, 2, 2.5, 5, 10) if step * magnitude >= raw)
    first = -(-low // step) * step
    return [first + index * step for index in range(int((high - first) // step) + 1)]


def chart(title: str, y_label: str, lines: list[dict], bands=(), levels=(), y_format="{:.1f}") -> str:
    """An SVG line chart over time. `lines`: {"label", "times" (Timestamps), "values", "colour", "dash"};
    `bands`: {"times", "low", "high", "colour"} shaded; `levels`: {"value", "label", "colour"} horizontal rules."""
    times = [time for line in lines for time in line["times"]] + [time for band in bands for time in band["times"]]
    if not times:
        return f'<p class="note">{html.escape(title)}: nothing to show yet.</p>'
    seconds = [time.timestamp() for time in times]
    values = [value for line in lines for value in line["values"]]
    values += [value for band in bands for value in (*band["low"], *band["high"])]
    values += [level["value"] for level in levels]
    x, (start, end) = scale(seconds, LEFT, WIDTH - RIGHT, padding=0.01)
    y, (low, high) = scale(values, HEIGHT - BOTTOM, TOP)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" role="img" '
        f'aria-label="{html.escape(title)}">',
        f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{LEFT}" y="16" style="font-size:13px;font-weight:bold">{html.escape(title)}</text>',
        f'<text x="12" y="{(TOP + HEIGHT - BOTTOM) / 2}" transform="rotate(-90 12 {(TOP + HEIGHT - BOTTOM) / 2})" '
        f'text-anchor="middle">{html.escape(y_label)}</text>',
    ]
    for tick in nice_ticks(low, high):
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="#eee"/>'
            f'<text x="{LEFT - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{y_format.format(tick)}</text>'
        )
    span = pd.Timestamp(end, unit="s") - pd.Timestamp(start, unit="s")
    tick_format = "%d %b %H:%M" if span < pd.Timedelta(days=7) else "%d %b"
    for tick in pd.date_range(pd.Timestamp(start, unit="s"), pd.Timestamp(end, unit="s"), periods=6):
        parts.append(
            f'<text x="{x(tick.timestamp()):.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">'
            f"{tick.strftime(tick_format)}</text>"
        )
    for band in bands:
        upper = [f"{x(t.timestamp()):.1f},{y(v):.1f}" for t, v in zip(band["times"], band["high"])]
        lower = [f"{x(t.timestamp()):.1f},{y(v):.1f}" for t, v in zip(band["times"], band["low"])]
        outline = " ".join(upper + lower[::-1])
        parts.append(f'<polygon points="{outline}" fill="{band["colour"]}" fill-opacity="0.2" stroke="none"/>')
    for level in levels:
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(level["value"]):.1f}" y2="{y(level["value"]):.1f}" '
            f'stroke="{level["colour"]}" stroke-dasharray="6 4"/>'
            f'<text x="{WIDTH - RIGHT - 4}" y="{y(level["value"]) - 4:.1f}" text-anchor="end" '
            f'style="fill:{level["colour"]}">{html.escape(level["label"])}</text>'
        )
    for index, line in enumerate(lines):
        points = " ".join(f"{x(t.timestamp()):.1f},{y(v):.1f}" for t, v in zip(line["times"], line["values"]) if v == v)
        dash = ' stroke-dasharray="2 3"' if line.get("dash") else ""
        parts.append(f'<polyline points="{points}" fill="none" stroke="{line["colour"]}" stroke-width="1.8"{dash}/>')
        parts.append(
            f'<text x="{LEFT + 8 + 150 * index}" y="{TOP + 12}" style="fill:{line["colour"]}">'
            f"{html.escape(line['label'])}</text>"
        )
    parts.append(
        f'<rect x="{LEFT}" y="{TOP}" width="{WIDTH - LEFT - RIGHT}" height="{HEIGHT - TOP - BOTTOM}" '
        f'fill="none" stroke="#999"/></svg>'
    )
    return "\n".join(parts)


def latest_forecast_chart(latest: dict | None) -> str:
    """The newest forecast's median and band against the readings before and after its issue."""
    if latest is None:
        return '<p class="note">No forecast archived yet.</p>'
    hours = latest["hours"]
    times = [pd.Timestamp(hour["valid_time"]) for hour in hours]
    levels = latest["quantile_levels"]
    readings = latest["readings"]
    return chart(
        f"Latest forecast (version {latest['model_version']}, issued from the reading of "
        f"{pd.Timestamp(latest['issue_time']):%Y-%m-%d %H:%M} UTC)",
        "T (degC)",
        [
            {
                "label": "observed",
                "times": [pd.Timestamp(reading["time"]) for reading in readings],
                "values": [reading["degC"] for reading in readings],
                "colour": "#222",
            },
            {
                "label": "forecast median",
                "times": times,
                "values": [hour["median_degC"] for hour in hours],
                "colour": COLOURS[0],
            },
        ],
        bands=[
            {
                "times": times,
                "low": [hour["quantiles_degC"][0] for hour in hours],
                "high": [hour["quantiles_degC"][-1] for hour in hours],
                "colour": COLOURS[0],
            }
        ],
        levels=(),
    ) + (f'<p class="note">Band: the {levels[0]:.0%} to {levels[-1]:.0%} quantiles.</p>' if len(levels) > 1 else "")


def daily_charts(summary: dict) -> str:
    """Daily +24 h MAE per version with its test MAE, and daily band coverage with the goal."""
    daily = pd.DataFrame(summary["daily"])
    if daily.empty:
        return '<p class="note">No forecast has matured yet.</p>'
    mae_lines, coverage_lines, test_levels = [], [], []
    for index, (version, rows) in enumerate(daily.groupby("model_version")):
        colour = COLOURS[index % len(COLOURS)]
        times = [pd.Timestamp(day, tz="UTC") for day in rows["day"]]
        label = f"v{version} +{int(rows['hours_ahead'].max())} h"
        mae_lines.append({"label": label, "times": times, "values": list(rows["mae_degC"]), "colour": colour})
        coverage_lines.append({"label": label, "times": times, "values": list(rows["coverage"]), "colour": colour})
        blessed = summary["blessing"].get(int(version)) or {}
        if blessed.get("test_mae_degC") is not None:
            test_levels.append({"value": blessed["test_mae_degC"], "label": f"v{version} test MAE", "colour": colour})
    goal = summary["coverage_goal"]
    all_times = [time for line in coverage_lines for time in line["times"]]
    goal_band = {"times": [min(all_times), max(all_times)], "low": [goal[0]] * 2, "high": [goal[1]] * 2}
    return chart("Daily MAE of the median at the last hour ahead", "MAE (degC)", mae_lines, levels=test_levels) + chart(
        "Daily coverage of the band at the last hour ahead (goal shaded)",
        "share in band",
        coverage_lines,
        bands=[{**goal_band, "colour": "#2ca02c"}],
        y_format="{:.0%}",
    )


def figure(value, form: str) -> str:
    return "–" if value is None or value != value else form.format(value)


def versions_table(summary: dict) -> str:
    """Per version: verified MAE, bias, pinball loss and coverage over all hours ahead in each window, and the
    figures it was blessed with."""
    rows = []
    for row in summary["scores"]:
        if row["hours_ahead"] != ALL:
            continue
        blessed = summary["blessing"].get(row["model_version"]) or {}
        rows.append(
            "<tr>"
            + "".join(
                f"<td>{cell}</td>"
                for cell in (
                    f"v{row['model_version']}",
                    html.escape(row["window"]),
                    figure(row["mae_degC"], "{:.3f}"),
                    figure(row["bias_degC"], "{:+.3f}"),
                    figure(row["pinball_loss_degC"], "{:.3f}"),
                    figure(row["coverage"], "{:.1%}"),
                    str(row["hours"]),
                    figure(blessed.get("test_mae_degC"), "{:.3f}"),
                    figure(blessed.get("band_coverage"), "{:.1%}"),
                    figure(blessed.get("skill_vs_persistence"), "{:.1%}"),
                )
            )
            + "</tr>"
        )
    header = (
        "<tr><th>version</th><th>window</th><th>MAE (C)</th><th>bias (C)</th><th>pinball (C)</th>"
        "<th>coverage</th><th>forecast hours</th><th>test MAE (C)</th><th>test coverage</th><th>test skill</th></tr>"
    )
    return f"<table>{header}{''.join(rows)}</table>"


def alarms_section(drift: dict) -> str:
    alarms = drift["alarms"]
    if not alarms:
        return '<p class="ok">No drift alarm.</p>'
    return "".join(
        f'<p class="alarm"><b>{html.escape(alarm["kind"])}: {html.escape(alarm["subject"])}</b> since '
        f"{html.escape(alarm['since'])}: {html.escape(alarm['message'])}</p>"
        for alarm in alarms
    )


def page(summary: dict) -> str:
    """The whole page as one HTML string."""
    notes = "".join(f'<p class="note">{html.escape(note)}</p>' for note in summary["drift"]["notes"])
    title = f"Verification of {summary['model_name']}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="note">As of {html.escape(summary["now"])}; {summary["archive"]["forecasts"]} forecasts archived
({html.escape(summary["archive"]["first_issue"])} to {html.escape(summary["archive"]["last_issue"])}),
{summary["matured_forecast_hours"]} forecast hours matured. Served version: {summary["served_version"]}.</p>
<h2>Drift</h2>
{alarms_section(summary["drift"])}{notes}
<h2>Latest forecast</h2>
{latest_forecast_chart(summary["latest_forecast"])}
<h2>Verification over time</h2>
{daily_charts(summary)}
<h2>Scores by version (all hours ahead) and the figures each was blessed with</h2>
{versions_table(summary)}
</body></html>
"""
