"""Verification and drift as Prometheus text, named as TensorFlow Serving names its metrics.

In:  a verification summary (forecast.verify.verification): scores per
     version, window and hour ahead, each version's blessing figures, the
     drift statistics and alarms.
Out: `exposition`, the Prometheus text exposition format (version 0.0.4), which
     forecast.verify writes atomically for node-exporter's textfile collector
     (`--collector.textfile.directory`, files `*.prom`) and serves under --serve.

TF Serving exports `/tensorflow/serving/request_count` as
`:tensorflow:serving:request_count` (serving/monitoring.py); these follow
suit under `/wetterfrosch/`: every metric is a gauge, in degC where its name
says `_degc`:
    :wetterfrosch:verification:mae_degc{model_name,version,window,hours_ahead}
    :wetterfrosch:verification:bias_degc{...}          forecast - observed
    :wetterfrosch:verification:pinball_loss_degc{...}  mean over the quantiles
    :wetterfrosch:verification:band_coverage{...}      share inside the outer quantiles
    :wetterfrosch:verification:forecast_hours{...}     matured forecast hours scored
    :wetterfrosch:verification:blessed_test_mae_degc{model_name,version}      from the model card
    :wetterfrosch:verification:blessed_band_coverage{model_name,version}
    :wetterfrosch:verification:blessed_skill{model_name,version}             over persistence
    :wetterfrosch:verification:newest_observation_timestamp_seconds{model_name}
    :wetterfrosch:drift:alarms{model_name}                                    active alarms, 0 when none
    :wetterfrosch:drift:alarm_since_timestamp_seconds{model_name,kind,subject}  one per active alarm
    :wetterfrosch:drift:mae_excess_degc{model_name,version,bound}   estimate, low, high (see forecast.drift)
    :wetterfrosch:drift:band_coverage{model_name,version,bound}     over the drift window
    :wetterfrosch:drift:psi{model_name,measurement}
    :wetterfrosch:drift:unchanged_hours{model_name,measurement}
`window` is `7d`, `30d` or `all`; `hours_ahead` a number or `all`.
"""

import math
import re

import pandas as pd

VERIFICATION = ":wetterfrosch:verification:"
DRIFT = ":wetterfrosch:drift:"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

HELP = {
    VERIFICATION + "mae_degc": "MAE of the forecast median against the observed temperature (degC).",
    VERIFICATION + "bias_degc": "Mean of forecast median minus observed temperature (degC).",
    VERIFICATION + "pinball_loss_degc": "Mean pinball loss over the forecast quantiles (degC).",
    VERIFICATION + "band_coverage": "Share of observed temperatures inside the band between the outer quantiles.",
    VERIFICATION + "forecast_hours": "Matured forecast hours scored.",
    VERIFICATION + "blessed_test_mae_degc": "Test MAE at the last hour ahead from the version's model card (degC).",
    VERIFICATION + "blessed_band_coverage": "Test band coverage from the version's model card.",
    VERIFICATION + "blessed_skill": "Test skill over persistence from the version's model card.",
    VERIFICATION + "newest_observation_timestamp_seconds": "Unix time of the newest observation verified against.",
    DRIFT + "alarms": "Active drift alarms.",
    DRIFT + "alarm_since_timestamp_seconds": "Unix time since which an active alarm's statistic has crossed.",
    DRIFT + "mae_excess_degc": "Last-hour MAE minus the MAE its test skill expects in that weather (degC).",
    DRIFT + "band_coverage": "Band coverage over the drift window.",
    DRIFT + "psi": "Population stability index of recent readings against the training split's same months.",
    DRIFT + "unchanged_hours": "Hours the measurement's value has not changed.",
}
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def escape(value) -> str:
    """A label value as the text format quotes it: backslash, double quote and newline escaped."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def number(value) -> str:
    """A sample value: NaN, +Inf and -Inf as the format spells them; integers without a fraction."""
    value = float("nan") if value is None else float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def sample(name: str, labels: dict, value) -> str:
    for label in labels:
        if not LABEL_NAME.fullmatch(label):
            raise ValueError(f"not a Prometheus label name: {label!r}")
    inside = ",".join(f'{label}="{escape(text)}"' for label, text in labels.items())
    return f"{name}{{{inside}}} {number(value)}" if labels else f"{name} {number(value)}"


def timestamp(text: str) -> float:
    """Unix seconds of a UTC day or hour as forecast.drift writes them."""
    return pd.Timestamp(text, tz="UTC").timestamp()


def samples(summary: dict) -> dict[str, list[tuple[dict, float]]]:
    """Every sample of the summary, by metric name."""
    model = summary["model_name"]
    found: dict[str, list[tuple[dict, float]]] = {name: [] for name in HELP}
    for row in summary["scores"]:
        labels = {
            "model_name": model,
            "version": str(row["model_version"]),
            "window": row["window"],
            "hours_ahead": str(row["hours_ahead"]),
        }
        for column, metric in (
            ("mae_degC", "mae_degc"),
            ("bias_degC", "bias_degc"),
            ("pinball_loss_degC", "pinball_loss_degc"),
            ("coverage", "band_coverage"),
            ("hours", "forecast_hours"),
        ):
            found[VERIFICATION + metric].append((labels, row[column]))
    for version, blessing in summary["blessing"].items():
        labels = {"model_name": model, "version": str(version)}
        for key, metric in (
            ("test_mae_degC", "blessed_test_mae_degc"),
            ("band_coverage", "blessed_band_coverage"),
            ("skill_vs_persistence", "blessed_skill"),
        ):
            if blessing.get(key) is not None:
                found[VERIFICATION + metric].append((labels, blessing[key]))
    found[VERIFICATION + "newest_observation_timestamp_seconds"].append(
        ({"model_name": model}, timestamp(summary["newest_observation"]))
    )
    drift = summary["drift"]
    found[DRIFT + "alarms"].append(({"model_name": model}, len(drift["alarms"])))
    for alarm in drift["alarms"]:
        labels = {"model_name": model, "kind": alarm["kind"], "subject": alarm["subject"]}
        found[DRIFT + "alarm_since_timestamp_seconds"].append((labels, timestamp(alarm["since"])))
    for key, metric in (("mae", "mae_excess_degc"), ("coverage", "band_coverage")):
        statistic = drift.get(key)
        if statistic:
            labels = {"model_name": model, "version": str(drift["served_version"])}
            low, high = statistic["interval"]
            for bound, value in (("estimate", statistic["estimate"]), ("low", low), ("high", high)):
                found[DRIFT + metric].append(({**labels, "bound": bound}, value))
    for measurement, statistic in (drift.get("inputs") or {}).items():
        labels = {"model_name": model, "measurement": measurement}
        found[DRIFT + "psi"].append((labels, statistic["psi"]))
        found[DRIFT + "unchanged_hours"].append((labels, statistic["unchanged_hours"]))
    return found


def exposition(summary: dict) -> str:
    """The summary in Prometheus' text format: per metric its HELP and TYPE lines, then its samples."""
    lines = []
    for name, found in samples(summary).items():
        if not found:
            continue
        lines += [f"# HELP {name} {HELP[name]}", f"# TYPE {name} gauge"]
        lines += [sample(name, labels, value) for labels, value in found]
    return "\n".join(lines) + "\n"
