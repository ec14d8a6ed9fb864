"""Forecast client: ask a served Jena model for the temperature 24 hours ahead.

    python -m serving.client recent.csv [--target localhost:8500] [--rest]
        [--model-name jena_temperature] [--version N | --label stable]

In:  a Jena-format CSV (10-minute or hourly rows) holding at least the last
     5 days; it is cleaned and averaged into hours by the pipeline's own
     prepare code, and its latest complete window is sent to the server.
Out: one line, e.g. `2016-12-31 23:00 +24 h: 3.4 C (model jena_temperature, version 3)`.

The library part (`latest_window`, `GrpcForecaster`, `RestForecaster`) talks
to TensorFlow Serving or our own ModelServer through the official gRPC stubs
or the REST API, and serves applications and the pipeline's smoke stage alike.
The window length comes from the served signature, so the client needs no
copy of the pipeline's params.
"""

import argparse
import sys
from dataclasses import dataclass

import grpc
import numpy as np
import pandas as pd
import requests
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

from pipeline import schema
from pipeline.prepare import InvalidData, prepare, read_raw_csv

SIGNATURE = schema.SIGNATURE_NAME
HISTORY, TIMESTAMPS, OUTPUT = schema.HISTORY_INPUT, schema.TIMESTAMPS_INPUT, schema.TEMPERATURE_OUTPUT
MAX_FILL_HOURS = 3
TIMEOUT_SECONDS = 30.0


class ForecastError(RuntimeError):
    """The input or the server did not allow a forecast; the message says why."""


def latest_window(readings: pd.DataFrame, lookback_hours: int) -> tuple[np.ndarray, np.ndarray]:
    """The last `lookback_hours` complete hourly rows: history [lookback, 14] and timestamps [lookback]."""
    hourly, _ = prepare(readings, MAX_FILL_HOURS)
    window = hourly.iloc[-lookback_hours:]
    if len(window) < lookback_hours:
        raise ForecastError(f"need at least {lookback_hours} hours of readings, the file covers {len(hourly)}")
    incomplete = window.index[window.isna().any(axis=1)]
    if len(incomplete):
        raise ForecastError(
            f"the last {lookback_hours} hours must be complete; readings are missing around "
            f"{incomplete[0]:%Y-%m-%d %H:%M} ({len(incomplete)} hours)"
        )
    timestamps = window.index.to_numpy(dtype="datetime64[s]").astype(np.int64)
    return window[schema.MEASUREMENTS].to_numpy(np.float32), timestamps


def model_spec(request, model_name: str, version: int | None = None, label: str | None = None) -> None:
    request.model_spec.name = model_name
    request.model_spec.signature_name = SIGNATURE
    if version is not None:
        request.model_spec.version.value = version
    elif label is not None:
        request.model_spec.version_label = label


def predict_request(model_name: str, history, timestamps, version=None, label=None) -> predict_pb2.PredictRequest:
    """A Predict request for `serving_default`: history [batch, lookback, 14], timestamps [batch, lookback]."""
    request = predict_pb2.PredictRequest()
    model_spec(request, model_name, version, label)
    request.inputs[HISTORY].CopyFrom(tf.make_tensor_proto(np.asarray(history, np.float32)))
    request.inputs[TIMESTAMPS].CopyFrom(tf.make_tensor_proto(np.asarray(timestamps, np.int64)))
    return request


@dataclass
class Forecast:
    temperatures_degC: np.ndarray
    model_name: str
    version: int | None


class GrpcForecaster:
    """PredictionService client for the served model's `serving_default` signature."""

    def __init__(self, target: str, model_name: str, timeout: float = TIMEOUT_SECONDS):
        self.channel = grpc.insecure_channel(target)
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model_name, self.timeout = model_name, timeout

    def signature(self, version=None, label=None):
        """The served `serving_default` SignatureDef, from GetModelMetadata."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        model_spec(request, self.model_name, version, label)
        response = self.stub.GetModelMetadata(request, timeout=self.timeout)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        if SIGNATURE not in signatures.signature_def:
            raise ForecastError(f"model {self.model_name} has no {SIGNATURE} signature")
        return signatures.signature_def[SIGNATURE]

    def lookback_hours(self, version=None, label=None) -> int:
        return self.signature(version, label).inputs[HISTORY].tensor_shape.dim[1].size

    def predict(self, history, timestamps, version=None, label=None) -> Forecast:
        """history [batch, lookback, 14] float32 and timestamps [batch, lookback] int64 -> forecasts."""
        request = predict_request(self.model_name, history, timestamps, version, label)
        response = self.stub.Predict(request, timeout=self.timeout)
        return Forecast(tf.make_ndarray(response.outputs[OUTPUT]), response.model_spec.name,
                        response.model_spec.version.value)

    def close(self):
        self.channel.close()


class RestForecaster:
    """The same over TensorFlow Serving's REST API (columnar `inputs` format)."""

    def __init__(self, target: str, model_name: str, timeout: float = TIMEOUT_SECONDS):
        self.base = f"http://{target}/v1/models/{model_name}"
        self.model_name, self.timeout = model_name, timeout
        self.session = requests.Session()

    def _url(self, version=None, label=None) -> str:
        if version is not None:
            return f"{self.base}/versions/{version}"
        return f"{self.base}/labels/{label}" if label is not None else self.base

    def _call(self, method, url, **kwargs) -> dict:
        response = self.session.request(method, url, timeout=self.timeout, **kwargs)
        body = response.json()
        if response.status_code != 200:
            raise ForecastError(f"{url}: HTTP {response.status_code}: {body.get('error', body)}")
        return body

    def lookback_hours(self, version=None, label=None) -> int:
        metadata = self._call("GET", self._url(version, label) + "/metadata")
        signature = metadata["metadata"]["signature_def"]["signature_def"][SIGNATURE]
        return int(signature["inputs"][HISTORY]["tensor_shape"]["dim"][1]["size"])

    def predict(self, history, timestamps, version=None, label=None) -> Forecast:
        body = {"signature_name": SIGNATURE,
                "inputs": {HISTORY: np.asarray(history).tolist(), TIMESTAMPS: np.asarray(timestamps).tolist()}}
        answer = self._call("POST", self._url(version, label) + ":predict", json=body)
        return Forecast(np.asarray(answer["outputs"], np.float32), self.model_name, version)

    def close(self):
        self.session.close()


def forecast_line(last_timestamp: int, horizon_hours: int, forecast: Forecast) -> str:
    valid_from = pd.Timestamp(last_timestamp, unit="s")
    version = f", version {forecast.version}" if forecast.version else ""
    return (f"{valid_from:%Y-%m-%d %H:%M} +{horizon_hours} h: {float(forecast.temperatures_degC[0]):.1f} C "
            f"(model {forecast.model_name}{version})")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m serving.client", description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", help="Jena-format CSV with at least the last 5 days")
    parser.add_argument("--target", default=None, help="host:port (default localhost:8500, or :8501 with --rest)")
    parser.add_argument("--rest", action="store_true", help="use the REST API instead of gRPC")
    parser.add_argument("--model-name", default="jena_temperature")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--version", type=int, help="ask this exact version")
    which.add_argument("--label", help="ask the version with this label (e.g. stable)")
    parser.add_argument("--horizon-hours", type=int, default=24, help="the model's forecast horizon, for the label")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    target = args.target or ("localhost:8501" if args.rest else "localhost:8500")
    forecaster = (RestForecaster if args.rest else GrpcForecaster)(target, args.model_name)
    try:
        readings = read_raw_csv(args.csv)
        lookback = forecaster.lookback_hours(args.version, args.label)
        history, timestamps = latest_window(readings, lookback)
        forecast = forecaster.predict(history[None], timestamps[None], args.version, args.label)
    except FileNotFoundError:
        print(f"client: {args.csv}: no such file", file=sys.stderr)
        return 2
    except (InvalidData, ForecastError) as error:
        print(f"client: {error}", file=sys.stderr)
        return 2
    except grpc.RpcError as error:
        print(f"client: {target}: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    except requests.RequestException as error:
        print(f"client: {target}: {error}", file=sys.stderr)
        return 1
    finally:
        forecaster.close()
    print(forecast_line(int(timestamps[-1]), args.horizon_hours, forecast))
    return 0


if __name__ == "__main__":
    sys.exit(main())
