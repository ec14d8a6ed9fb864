"""`forecast.issue`: the served model's forecast archived once per issue hour, over gRPC and REST, into a
local directory, S3 and GCS; and every failure one line on stderr with the archive untouched."""

import subprocess
import sys

import grpc
import numpy as np
import pandas as pd
import pytest
import requests

from forecast import archive, issue
from forecast.client import ForecastError, latest_window
from pipeline import schema, synthetic
from pipeline.prepare import prepare
from pipeline.serving_check import free_port
from tests.helpers.commands import run_main
from tests.helpers.readings import make_readings, to_csv_text
from tests.helpers.repository import REPO_ROOT
from tests.helpers.served_forecaster import HORIZON_HOURS, LEVELS, MODEL_NAME, expected_forecast, model_card

ISSUED = pd.Timestamp("2020-01-03 00:00", tz="UTC")  # the last hour of two days of readings from 2020-01-01 00:10


def readings_file(directory, hours=48):
    """Jena readings every 10 minutes ending at ISSUED + (hours - 48) hours; its path and last hour's temperature."""
    readings = make_readings(periods=6 * hours)
    path = directory / f"recent-{hours}h.csv"
    path.write_text(to_csv_text(readings))
    return path, float(readings[schema.TEMPERATURE].iloc[-6:].mean())


def issue_in_process(capsys, *args) -> tuple[int, str, str]:
    return run_main(issue.main, capsys, *args)


def archived_files(root) -> list[str]:
    return sorted(path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file())


@pytest.mark.slow
def test_the_served_forecast_is_archived_once_per_issue_hour_over_grpc_and_rest(served_model, tmp_path, capsys):
    csv, last_temperature = readings_file(tmp_path)
    root = tmp_path / "archive"
    before = pd.Timestamp.now(tz="UTC").floor("s")
    code, out, err = issue_in_process(
        capsys, csv, "--model-name", MODEL_NAME, "--target", served_model.grpc_target, "--archive", root
    )
    after = pd.Timestamp.now(tz="UTC")
    first = f"{root}/issue_date=2020-01-03/jena_temperature-1-20200103T000000Z.parquet"
    assert (code, err) == (0, "")
    assert out == (
        "archived: jena_temperature version 1 issued 2020-01-03 00:00 UTC, 6 hours to 2020-01-03 06:00: " + first + "\n"
    )

    frame = archive.read(root, model_name=MODEL_NAME)
    medians, quantiles = expected_forecast(last_temperature)
    assert len(frame) == HORIZON_HOURS and (frame["model_version"] == 1).all()
    assert (frame["issue_time"] == ISSUED).all()
    assert before <= frame["requested_at"].iloc[0] <= after
    assert list(frame["valid_time"]) == [ISSUED + pd.Timedelta(hours=hour) for hour in range(1, 7)]
    np.testing.assert_allclose(frame["median"], medians, atol=1e-4)
    np.testing.assert_allclose(frame[["q10", "q50", "q90"]], quantiles, atol=1e-4)

    # The same readings over REST, as `python -m forecast.issue`, with the version's model card: nothing new.
    stored = open(first, "rb").read()
    again = subprocess.run(
        [sys.executable, "-m", "forecast.issue", str(csv), "--rest", "--target", served_model.rest_target]
        + ["--model-card", str(served_model.version_dir), "--archive", str(root)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"already archived: jena_temperature version 1 issued 2020-01-03 00:00 UTC ({first})\n"
    assert archived_files(root) == ["issue_date=2020-01-03/jena_temperature-1-20200103T000000Z.parquet"]
    assert open(first, "rb").read() == stored

    # An hour later the readings have moved on: REST issues the next forecast, pinned to the version it names.
    csv, last_temperature = readings_file(tmp_path, hours=49)
    code, out, err = issue_in_process(
        capsys, csv, "--rest", "--model-name", MODEL_NAME, "--target", served_model.rest_target, "--archive", root
    )
    assert (code, err) == (0, ""), err
    assert out.startswith(
        "archived: jena_temperature version 1 issued 2020-01-03 01:00 UTC, 6 hours to 2020-01-03 07:00"
    )
    later = archive.read(root, since=ISSUED + pd.Timedelta(hours=1))
    np.testing.assert_allclose(later["median"], expected_forecast(last_temperature)[0], atol=1e-4)
    assert len(archive.read(root)) == 2 * HORIZON_HOURS


@pytest.mark.slow
def test_forecasts_are_archived_in_object_storage(served_model, object_store, tmp_path, capsys):
    csv, _ = readings_file(tmp_path)
    root = object_store.create_bucket("forecasts") + "/jena_temperature"
    arguments = [csv, "--model-name", MODEL_NAME, "--target", served_model.grpc_target, "--archive", root]
    code, out, err = issue_in_process(capsys, *arguments)
    assert (code, err) == (0, "")
    assert out.endswith(f": {root}/issue_date=2020-01-03/jena_temperature-1-20200103T000000Z.parquet\n")
    assert issue_in_process(capsys, *arguments)[1].startswith("already archived: ")
    assert len(archive.read(root)) == HORIZON_HOURS


@pytest.mark.slow
def test_an_unreachable_store_fails_the_run_in_one_line(served_model, s3_server, tmp_path, capsys):
    csv, _ = readings_file(tmp_path)
    root = s3_server.create_bucket("forecasts") + "/jena_temperature"
    s3_server.stop()
    code, out, err = issue_in_process(
        capsys, csv, "--model-name", MODEL_NAME, "--target", served_model.grpc_target, "--archive", root
    )
    assert (code, out) == (1, "")
    assert (
        err.startswith("issue: s3://forecasts/jena_temperature: cannot connect to the endpoint")
        and err.count("\n") == 1
    )
    s3_server.start()
    assert archive.read(root).empty


def write_card(path, **changes):
    import json

    path.write_text(json.dumps(model_card(**changes)))
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    "flags, problem",
    [
        (
            ["--model-card", "{card_levels}"],
            "the card's quantile levels are [0.05, 0.5, 0.95], version 1 serves [0.1, 0.5, 0.9]",
        ),
        (["--model-card", "{card_hours}"], "the card's forecast covers hours 1 .. 24, version 1 serves 1 .. 6"),
        (
            ["--model-card", "{card_other}", "--model-name", MODEL_NAME],
            "a card of model other_model, not of jena_temperature",
        ),
    ],
)
def test_a_model_card_that_does_not_match_the_served_version_writes_nothing(
    served_model, tmp_path, capsys, flags, problem
):
    csv, _ = readings_file(tmp_path)
    cards = {
        "card_levels": write_card(tmp_path / "levels.json", forecast={"quantile_levels": [0.05, 0.5, 0.95]}),
        "card_hours": write_card(tmp_path / "hours.json", forecast={"hour_offsets": list(range(1, 25))}),
        "card_other": write_card(tmp_path / "other.json", model_name="other_model"),
    }
    flags = [flag.format(**cards) for flag in flags]
    root = tmp_path / "archive"
    code, out, err = issue_in_process(capsys, csv, "--target", served_model.grpc_target, "--archive", root, *flags)
    assert (code, out) == (2, "")
    assert err.startswith("issue: ") and problem in err and err.count("\n") == 1
    assert not root.exists()


@pytest.mark.slow
def test_another_models_archive_is_refused_and_left_as_it_was(served_model, tmp_path, capsys):
    csv, _ = readings_file(tmp_path)
    root = tmp_path / "archive"
    foreign = archive.forecast_rows(
        archive_answer("other_model"), ISSUED, ISSUED, LEVELS
    )  # another model's forecast of the same hour
    other = archive.append(root, foreign)
    code, out, err = issue_in_process(
        capsys, csv, "--model-name", MODEL_NAME, "--target", served_model.grpc_target, "--archive", root
    )
    assert (code, out) == (2, "")
    assert err == f"issue: {other}: a forecast of model other_model, not of jena_temperature: another model's archive\n"
    assert archived_files(root) == ["issue_date=2020-01-03/other_model-1-20200103T000000Z.parquet"]


def archive_answer(model_name: str):
    from forecast.client import Forecast

    medians = np.zeros(HORIZON_HOURS, np.float32)
    return Forecast(
        medians[-1:],
        np.array([int(ISSUED.timestamp()) + HORIZON_HOURS * 3600]),
        model_name,
        1,
        paths=medians[None],
        quantiles=np.zeros((1, HORIZON_HOURS, 3), np.float32),
        levels=np.float32([LEVELS]),
    )


def test_an_unreachable_server_is_one_line_exit_1_and_the_archive_untouched(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(issue, "RETRY_PAUSE_SECONDS", 0.01)
    csv, _ = readings_file(tmp_path)
    root = tmp_path / "archive"
    port = free_port()  # nothing listens there
    for flags, wording in (([], "UNAVAILABLE"), (["--rest"], "Connection refused")):
        code, out, err = issue_in_process(
            capsys, csv, "--model-name", MODEL_NAME, "--target", f"127.0.0.1:{port}", "--archive", root, *flags
        )
        assert (code, out) == (1, "")
        assert err.startswith(f"issue: 127.0.0.1:{port}: ") and wording in err and err.count("\n") == 1
    assert not root.exists()


def test_readings_with_other_columns_are_refused_before_the_server_is_asked(tmp_path, capsys):
    readings = make_readings(periods=6 * 48).assign(**{"rain (mm)": 0.0})
    csv = tmp_path / "station.csv"
    readings.to_csv(csv, index=False, date_format=schema.DATE_FORMAT)
    root = tmp_path / "archive"
    arguments = ["--model-name", MODEL_NAME, "--target", f"127.0.0.1:{free_port()}", "--archive", root]
    code, out, err = issue_in_process(capsys, csv, *arguments)
    assert (code, out) == (2, "")
    assert err == f"issue: {csv}: header has missing columns [] and unexpected columns ['rain (mm)']\n"
    code, _, err = issue_in_process(capsys, tmp_path / "absent.csv", *arguments)
    assert code == 2 and err == f"issue: {tmp_path / 'absent.csv'}: no such file\n"
    assert not root.exists()


class RpcFailure(grpc.RpcError):
    def __init__(self, code):
        self._code = code

    def code(self):
        return self._code


def failing(errors: list, answer="answer"):
    """A call that raises `errors` one by one, then returns `answer`; `.calls` counts the calls."""

    def call():
        call.calls += 1
        if errors:
            raise errors.pop(0)
        return answer

    call.calls = 0
    return call


def test_server_calls_are_retried_a_bounded_number_of_times_while_unreachable():
    call = failing([RpcFailure(grpc.StatusCode.UNAVAILABLE), requests.ConnectionError("refused")])
    assert issue.with_retries(call, attempts=3, pause_seconds=0) == "answer" and call.calls == 3

    call = failing([RpcFailure(grpc.StatusCode.DEADLINE_EXCEEDED)] * 5)
    with pytest.raises(RpcFailure):
        issue.with_retries(call, attempts=3, pause_seconds=0)
    assert call.calls == 3

    call = failing([RpcFailure(grpc.StatusCode.NOT_FOUND)])  # no such model: asking again will not help
    with pytest.raises(RpcFailure):
        issue.with_retries(call, attempts=3, pause_seconds=0)
    assert call.calls == 1


def test_options_are_checked_before_anything_runs(tmp_path, capsys):
    for arguments, wording in (
        (["r.csv", "--model-name", MODEL_NAME], "the following arguments are required: --archive"),
        (["r.csv", "--model-name", MODEL_NAME, "--archive", "a", "--attempts", "0"], "--attempts must be at least 1"),
        (["r.csv", "--archive", "a"], "--model-name NAME or --model-card PATH"),
        (["r.csv", "--model-name", MODEL_NAME, "--archive", "a", "--rest", "--tls"], "--tls applies to gRPC"),
    ):
        with pytest.raises(SystemExit) as exited:
            issue.main(arguments)
        assert exited.value.code == 2 and wording in capsys.readouterr().err


def whole_record_window(readings, lookback_hours: int, max_fill_hours: int):
    """The last `lookback_hours` hours of the whole record prepared, or None when one of them is incomplete."""
    hourly, _ = prepare(readings, max_fill_hours)
    window = hourly.iloc[-lookback_hours:]
    return None if window.isna().any().any() else window.to_numpy(np.float32)


def test_the_window_of_a_growing_record_is_the_whole_records_last_hours():
    """latest_window prepares only the record's last hours: cut after readings all around gaps of 1 to 5 hours and a
    wind sensor failing for 2 to 4 hours, the window is the whole record's, or both are incomplete."""
    readings = synthetic.generate_readings("2020-01-01", "2020-01-08", seed=1)

    def hours_from(start: str, hours: int) -> pd.Series:
        times = readings[schema.DATE_COLUMN]
        return (times > pd.Timestamp(start)) & (times <= pd.Timestamp(start) + pd.Timedelta(hours=hours))

    for start, hours in (
        ("2020-01-03 02:00", 5),
        ("2020-01-04 12:00", 1),
        ("2020-01-04 20:00", 3),
        ("2020-01-05 06:00", 4),
    ):
        readings = readings[~hours_from(start, hours)]
    for start, hours in (("2020-01-05 20:00", 2), ("2020-01-06 14:00", 3), ("2020-01-06 22:00", 4)):
        readings.loc[hours_from(start, hours), schema.SENTINEL_COLUMNS] = schema.SENTINEL
    readings = readings.reset_index(drop=True)
    cuts = np.flatnonzero(readings[schema.DATE_COLUMN] >= pd.Timestamp("2020-01-03 00:00"))[::7]  # every 70 minutes
    outcomes = {"complete": 0, "incomplete": 0}
    for cut in cuts[cuts < len(readings) - 6 * 12]:
        arrived = readings.iloc[: cut + 1]
        expected = whole_record_window(arrived, 24, 3)
        if expected is None:
            with pytest.raises(ForecastError, match="must be complete"):
                latest_window(arrived, 24, 3)
            outcomes["incomplete"] += 1
        else:
            np.testing.assert_array_equal(latest_window(arrived, 24, 3)[0], expected)
            outcomes["complete"] += 1
    assert outcomes["complete"] > 25 and outcomes["incomplete"] > 25, outcomes
