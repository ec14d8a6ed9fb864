"""The forecast client's input handling and command line, in this process (the served path is in test_smoke)."""

import json

import numpy as np
import pandas as pd
import pytest

from forecast.client import (
    Forecast,
    ForecastError,
    forecast_answer,
    forecast_line,
    forecast_table,
    latest_window,
    read_model_card,
    tensor_proto,
    to_array,
)
from forecast.client import main as client_main
from pipeline import schema
from tests.helpers.commands import run_main
from tests.helpers.readings import make_readings, to_csv_text


def test_latest_window_from_ten_minute_rows():
    readings = make_readings(periods=6 * 24 * 6)  # six days
    history, timestamps = latest_window(readings, 120)
    assert history.shape == (120, 14) and history.dtype == np.float32
    assert pd.Timestamp(timestamps[-1], unit="s") == readings[schema.DATE_COLUMN].iloc[-1].ceil("h")
    assert np.all(np.diff(timestamps) == 3600)
    last_hour = readings[schema.TEMPERATURE].iloc[-6:].mean()
    assert history[-1, schema.column_index(schema.TEMPERATURE)] == pytest.approx(last_hour, abs=1e-4)


def test_latest_window_from_hourly_rows_is_the_rows_themselves():
    readings = make_readings(start="2020-01-01 01:00", periods=130)
    readings[schema.DATE_COLUMN] = pd.date_range("2020-01-01 01:00", periods=130, freq="h")
    history, _ = latest_window(readings, 120)
    np.testing.assert_allclose(history, readings[schema.MEASUREMENTS].to_numpy(np.float32)[-120:])


def test_too_little_history_is_a_clear_error():
    with pytest.raises(ForecastError, match="need at least 120 hours of readings, the file covers 48"):
        latest_window(make_readings(periods=6 * 48), 120)


def test_a_long_gap_in_the_window_is_a_clear_error():
    readings = make_readings(periods=6 * 24 * 6)
    gapped = readings.drop(index=range(400, 460))  # 10 hours missing
    with pytest.raises(ForecastError, match="must be complete; readings are missing around 2020-01-03"):
        latest_window(gapped, 120)


def test_a_short_gap_is_filled_only_when_asked():
    readings = make_readings(periods=6 * 24 * 6)
    gapped = readings.drop(index=range(400, 412))  # 2 hours missing
    with pytest.raises(ForecastError, match="--max-fill-hours"):
        latest_window(gapped, 120)
    history, _ = latest_window(gapped, 120, max_fill_hours=2)
    assert not np.isnan(history).any()


def test_forecast_line_and_answer_name_the_valid_time():
    last = pd.Timestamp("2017-01-01 00:00").value // 10**9
    forecast = Forecast(np.array([1.2321], np.float32), np.array([last + 24 * 3600]), "jena_temperature", 3)
    answer = forecast_answer(last, forecast)
    assert answer == {
        "valid_time": "2017-01-02 00:00",
        "last_reading": "2017-01-01 00:00",
        "horizon_hours": 24,
        "temperature_degC": 1.23,
        "model_name": "jena_temperature",
        "version": 3,
    }
    assert forecast_line(answer) == (
        "forecast for 2017-01-02 00:00 (24 h after the last reading at "
        "2017-01-01 00:00): 1.2 C (model jena_temperature, version 3)"
    )


def hourly_forecast(last: int, hours: int = 3) -> Forecast:
    """A forecast of `hours` hours: medians 1.0, 2.0, ...; band median -1 and +1.5; levels 0.1, 0.5, 0.9."""
    medians = np.arange(1, hours + 1, dtype=np.float32)
    quantiles = np.stack([medians - 1, medians, medians + 1.5], axis=-1)
    return Forecast(
        medians[-1:],
        np.array([last + hours * 3600]),
        "jena_temperature",
        3,
        paths=medians[None],
        quantiles=quantiles[None],
        levels=np.float32([[0.1, 0.5, 0.9]]),
    )


def test_hourly_answer_lists_every_hour_with_its_valid_time_median_and_quantiles():
    last = pd.Timestamp("2017-01-01 00:00").value // 10**9
    answer = forecast_answer(last, hourly_forecast(last))
    assert answer["horizon_hours"] == 3 and answer["temperature_degC"] == 3.0
    assert answer["quantile_levels"] == [0.1, 0.5, 0.9]
    assert answer["hours"] == [
        {"hour": 1, "valid_time": "2017-01-01 01:00", "median_degC": 1.0, "quantiles_degC": [0.0, 1.0, 2.5]},
        {"hour": 2, "valid_time": "2017-01-01 02:00", "median_degC": 2.0, "quantiles_degC": [1.0, 2.0, 3.5]},
        {"hour": 3, "valid_time": "2017-01-01 03:00", "median_degC": 3.0, "quantiles_degC": [2.0, 3.0, 4.5]},
    ]


def test_the_table_shows_hour_valid_time_median_and_band():
    last = pd.Timestamp("2017-01-01 00:00").value // 10**9
    table = forecast_table(forecast_answer(last, hourly_forecast(last))).splitlines()
    assert table[0] == "forecast after the last reading at 2017-01-01 00:00 (model jena_temperature, version 3)"
    assert table[1].split() == ["hour", "valid", "time", "median", "10%-90%", "band"]
    assert table[2].split() == ["+1", "h", "2017-01-01", "01:00", "1.0", "C", "0.0", "..", "2.5", "C"]
    assert table[4].split() == ["+3", "h", "2017-01-01", "03:00", "3.0", "C", "2.0", "..", "4.5", "C"]
    assert len(table) == 2 + 3


def test_a_model_serving_only_the_day_ahead_temperature_gets_the_single_line():
    last = pd.Timestamp("2017-01-01 00:00").value // 10**9
    answer = forecast_answer(last, Forecast(np.array([1.2], np.float32), np.array([last + 24 * 3600]), "old", None))
    assert "hours" not in answer and "quantile_levels" not in answer
    assert (
        forecast_table(answer)
        == forecast_line(answer)
        == ("forecast for 2017-01-02 00:00 (24 h after the last reading at 2017-01-01 00:00): 1.2 C (model old)")
    )


@pytest.mark.parametrize(
    "array", [np.arange(6, dtype=np.float32).reshape(1, 2, 3) / 7, np.array([[1, -(2**40)]], np.int64)]
)
def test_tensor_protos_round_trip_as_tensorflow_reads_them(array):
    import tensorflow as tf

    proto = tensor_proto(array)
    np.testing.assert_array_equal(tf.make_ndarray(proto), array)
    np.testing.assert_array_equal(to_array(proto), array)
    np.testing.assert_array_equal(to_array(tf.make_tensor_proto(array)), array)


def run_client(capsys, *args) -> tuple[int, str]:
    """The command line for model "m" in this process: (exit code, stderr)."""
    code, _, err = run_main(client_main, capsys, "--model-name", "m", *args)
    return code, err


def test_an_unreachable_server_is_one_line_and_exit_1(tmp_path, capsys):
    csv = tmp_path / "recent.csv"
    csv.write_text(to_csv_text(make_readings(periods=6 * 24 * 6)))
    code, err = run_client(capsys, csv, "--target", "127.0.0.1:9")
    assert code == 1 and "127.0.0.1:9: UNAVAILABLE" in err and len(err.splitlines()) == 1, err


def test_cli_rejects_broken_input_before_calling_the_server(tmp_path, capsys):
    code, err = run_client(capsys, tmp_path / "absent.csv", "--target", "127.0.0.1:9")
    assert code == 2 and "no such file" in err
    broken = tmp_path / "broken.csv"
    broken.write_text(to_csv_text(make_readings(periods=12)).replace("990", "x990", 1))
    code, err = run_client(capsys, broken, "--target", "127.0.0.1:9")
    assert code == 2 and "column 'p (mbar)'" in err


def test_cli_tls_options_are_checked_before_calling_the_server(tmp_path, capsys):
    csv = tmp_path / "recent.csv"
    csv.write_text(to_csv_text(make_readings(periods=6 * 24 * 6)))
    base = [csv, "--target", "127.0.0.1:9"]
    for flags, wording in (
        (["--tls-cert", tmp_path / "client.pem"], "--tls-cert and --tls-key go together"),
        (["--rest", "--tls"], "--tls applies to gRPC"),
    ):
        code, err = run_client(capsys, *base, *flags)
        assert code == 2 and wording in err
    code, err = run_client(capsys, *base, "--tls-ca", tmp_path / "absent.pem")
    assert code == 2 and "absent.pem: No such file or directory" in err


def test_cli_brief_and_json_exclude_each_other(tmp_path, capsys):
    code, err = run_client(capsys, tmp_path / "recent.csv", "--brief", "--json")
    assert code == 2 and "not allowed with argument" in err


def write_card(directory, **changes):
    card = {
        "model_name": "jena_temperature",
        "measurements": schema.MEASUREMENTS,
        "params": {"prepare": {"max_fill_hours": 3}},
        **changes,
    }
    (directory / "assets.extra").mkdir(parents=True)
    (directory / schema.MODEL_CARD_FILE).write_text(json.dumps(card))
    return directory


def test_the_model_card_gives_name_measurement_order_and_gap_filling(tmp_path):
    reordered = [*schema.MEASUREMENTS[1:], schema.MEASUREMENTS[0]]
    version = write_card(tmp_path / "7", measurements=reordered)
    for path in (version, version / schema.MODEL_CARD_FILE):
        card = read_model_card(str(path))
        assert (card.model_name, card.measurements, card.max_fill_hours) == ("jena_temperature", reordered, 3)

    readings = make_readings(periods=6 * 24 * 6)
    in_csv_order, _ = latest_window(readings, 120)
    in_card_order, _ = latest_window(readings, 120, measurements=reordered)
    np.testing.assert_array_equal(in_card_order, np.roll(in_csv_order, -1, axis=1))


def test_a_card_that_is_missing_broken_or_reads_other_measurements_is_named(tmp_path):
    with pytest.raises(ForecastError, match="absent.*No such file"):
        read_model_card(str(tmp_path / "absent"))
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ForecastError, match="broken.json: not a model card"):
        read_model_card(str(broken))
    foreign = write_card(tmp_path / "3", measurements=[*schema.MEASUREMENTS[:-1], "snow (cm)"])
    with pytest.raises(ForecastError, match=r"model_card.json: the model reads .*unknown: \['snow \(cm\)'\]"):
        read_model_card(str(foreign))


def test_cli_needs_a_model_name_or_card(tmp_path, capsys):
    code, _, err = run_main(client_main, capsys, tmp_path / "recent.csv")
    assert code == 2 and "--model-name NAME or --model-card PATH" in err
    code, err = run_client(capsys, tmp_path / "recent.csv", "--model-card", tmp_path / "absent")
    assert code == 2 and "absent" in err
