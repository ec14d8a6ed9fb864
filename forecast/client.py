"""Forecast client: ask a served Jena model for the next 24 hours, hour by hour, with a band.

    python -m forecast.client recent.csv --model-name jena_temperature
        [--target localhost:8500] [--rest] [--version N | --label stable]
        [--model-card VERSION_DIR] [--max-fill-hours H] [--brief | --json]
        [--tls] [--tls-ca ca.pem] [--tls-cert client.pem --tls-key client.key]

In:  a Jena-format CSV (10-minute or hourly rows) holding at least the
     model's history (5 days by default); it is cleaned and averaged into hours
     by the pipeline's own prepare code, and its latest complete window is sent
     to the server.
Out: a table of the hours ahead (hour, valid time, median, the band between
     the outer quantiles, 10-90 % by default); with `--brief` one line, e.g.
     `forecast for 2017-01-02 00:00 (24 h after the last reading at
     2017-01-01 00:00): 1.2 C (model jena_temperature, version 1)`; with
     `--json` a JSON object with the same line's fields plus `quantile_levels`
     and `hours` (per hour its offset, valid time, median and quantiles). A
     model that serves only `temperature_degC` (versions before the hourly
     forecast) gets the single line, and its JSON no `hours`.

Everything about the model comes from the served model itself, not from a
copy of params.yaml: the history length and the number of measurements from
the signature's `history` shape (GetModelMetadata, or REST `.../metadata`),
the forecast horizon from the model's own `valid_time` output (the moment its
temperature is for), the quantile levels from its `quantile_levels` output.
What TF Serving's API cannot tell, the order of the measurements and how
much gap filling the model was trained with, comes from the version's model
card (`--model-card`, the card export writes into `assets.extra/`); without
one, the order is the Jena CSV's (`pipeline.schema`) and short gaps are
interpolated only when asked (`--max-fill-hours`).
`--tls` talks gRPC over TLS (a server started with `--ssl_config_file`),
trusting the system's CAs or the one in `--tls-ca`; `--tls-cert` and
`--tls-key` present a client certificate (for `client_verify: true`).

The library part (`latest_window`, `GrpcForecaster`, `RestForecaster`) talks
to TensorFlow Serving or our own ModelServer through the official gRPC stubs
or the REST API, and serves applications and the pipeline's stages alike. It
is the only bridge between the application (pipeline/) and a server: it uses
the official protos, never code from serving/. Commands that ask a served
model from a readings file (this one, forecast.issue) share its options
(`add_request_options`, `check_request_options`) and their meaning
(`model_card_of`, `forecaster_of`).
"""

import argparse
import contextlib
import json
import os
import sys
from dataclasses import dataclass

import grpc
import numpy as np
import pandas as pd
import requests

from pipeline import schema
from pipeline.prepare import InvalidData, prepare, read_raw_csv


@contextlib.contextmanager
def _native_stderr_silenced():
    """TensorFlow's C++ runtime logs to file descriptor 2 when the official protos import it."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


with _native_stderr_silenced():
    from tensorflow.core.framework import tensor_pb2, types_pb2
    from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

SIGNATURE = schema.SIGNATURE_NAME
HISTORY, TIMESTAMPS = schema.HISTORY_INPUT, schema.TIMESTAMPS_INPUT
TEMPERATURE, VALID_TIME = schema.TEMPERATURE_OUTPUT, schema.VALID_TIME_OUTPUT
# Outputs of the hourly forecast; a model from before it serves none of them.
HOURLY_OUTPUTS = {
    "paths": schema.PATH_OUTPUT,
    "quantiles": schema.QUANTILES_OUTPUT,
    "levels": schema.QUANTILE_LEVELS_OUTPUT,
}
TIMEOUT_SECONDS = 30.0
HOUR = pd.Timedelta(hours=1)
DTYPES = {np.dtype(np.float32): types_pb2.DT_FLOAT, np.dtype(np.int64): types_pb2.DT_INT64}


class ForecastError(RuntimeError):
    """The input or the server did not allow a forecast; the message says why."""


def latest_window(
    readings: pd.DataFrame, lookback_hours: int, max_fill_hours: int = 0, measurements: list[str] = schema.MEASUREMENTS
) -> tuple[np.ndarray, np.ndarray]:
    """The last `lookback_hours` complete hourly rows: history [lookback, 14] and timestamps [lookback].

    `measurements` is the order of the history's columns (the model card's, when the client has it). Only
    the readings of the last lookback + max_fill_hours + 1 hours are prepared: a gap short enough to be
    filled in the window has its earlier neighbour among them, so the window is the one the whole record
    prepared gives, at a cost that does not grow with the record (an hourly issue reads a growing file).
    """
    times = readings[schema.DATE_COLUMN]
    last_hour = times.max().ceil("h")
    covered = int((last_hour - times.min().ceil("h")) // HOUR) + 1
    if covered < lookback_hours:
        raise ForecastError(f"need at least {lookback_hours} hours of readings, the file covers {covered}")
    recent = readings[times > last_hour - (lookback_hours + max_fill_hours + 1) * HOUR]
    hourly, _ = prepare(recent, max_fill_hours)
    hours = pd.date_range(end=last_hour, periods=lookback_hours, freq="h")
    history = hourly[measurements].reindex(hours).to_numpy(np.float32)
    incomplete = hours[np.isnan(history).any(axis=1)]
    if len(incomplete):
        raise ForecastError(
            f"the last {lookback_hours} hours must be complete; readings are missing around "
            f"{incomplete[0]:%Y-%m-%d %H:%M} ({len(incomplete)} hours; --max-fill-hours interpolates short gaps)"
        )
    return history, hours.to_numpy(dtype="datetime64[s]").astype(np.int64)


@dataclass
class ModelCard:
    """What the client takes from a version's model card: the name, measurement order and gap filling,
    and the forecast it promises (quantile levels, hour offsets; None when the card does not say)."""

    model_name: str
    measurements: list[str]
    max_fill_hours: int
    quantile_levels: list[float] | None = None
    hour_offsets: list[int] | None = None


def read_model_card(path: str) -> ModelCard:
    """The model card of an exported version: its directory or its `model_card.json`."""
    card_file = os.path.join(path, schema.MODEL_CARD_FILE) if os.path.isdir(path) else path
    try:
        with open(card_file, encoding="utf-8") as handle:
            card = json.load(handle)
        measurements = list(card["measurements"])
        max_fill_hours = int(card["params"]["prepare"]["max_fill_hours"])
        model_name = str(card["model_name"])
        promised = card.get("forecast") or {}
        levels = [float(level) for level in promised["quantile_levels"]] if "quantile_levels" in promised else None
        offsets = [int(offset) for offset in promised["hour_offsets"]] if "hour_offsets" in promised else None
    except OSError as error:
        raise ForecastError(f"{card_file}: {error.strerror}") from None
    except (ValueError, KeyError, TypeError) as error:
        raise ForecastError(f"{card_file}: not a model card ({type(error).__name__}: {error})") from None
    unknown = sorted(set(measurements) - set(schema.MEASUREMENTS))
    if unknown or len(measurements) != len(schema.MEASUREMENTS):
        raise ForecastError(
            f"{card_file}: the model reads {measurements}, which are not the Jena CSV's "
            f"{len(schema.MEASUREMENTS)} measurements (unknown: {unknown})"
        )
    return ModelCard(model_name, measurements, max_fill_hours, levels, offsets)


def tensor_proto(array) -> "tensor_pb2.TensorProto":
    """A TensorProto of a float32 or int64 array (raw bytes in `tensor_content`)."""
    array = np.ascontiguousarray(array)
    proto = tensor_pb2.TensorProto(dtype=DTYPES[array.dtype], tensor_content=array.tobytes())
    proto.tensor_shape.dim.extend(proto.tensor_shape.Dim(size=size) for size in array.shape)
    return proto


def to_array(proto: "tensor_pb2.TensorProto") -> np.ndarray:
    """The float32 or int64 array of a TensorProto answered by TF Serving."""
    dtype = {code: dtype for dtype, code in DTYPES.items()}[proto.dtype]
    shape = [dim.size for dim in proto.tensor_shape.dim]
    if proto.tensor_content:
        return np.frombuffer(proto.tensor_content, dtype).reshape(shape)
    values = proto.float_val if dtype == np.float32 else proto.int64_val
    return np.asarray(values, dtype).reshape(shape)


def model_spec(request, model_name: str, version: int | None = None, label: str | None = None) -> None:
    request.model_spec.name = model_name
    request.model_spec.signature_name = SIGNATURE
    if version is not None:
        request.model_spec.version.value = version
    elif label is not None:
        request.model_spec.version_label = label


def predict_request(model_name: str, history, timestamps, version=None, label=None) -> "predict_pb2.PredictRequest":
    """A Predict request for `serving_default`: history [batch, lookback, 14], timestamps [batch, lookback]."""
    request = predict_pb2.PredictRequest()
    model_spec(request, model_name, version, label)
    request.inputs[HISTORY].CopyFrom(tensor_proto(np.asarray(history, np.float32)))
    request.inputs[TIMESTAMPS].CopyFrom(tensor_proto(np.asarray(timestamps, np.int64)))
    return request


def history_shape(lookback: int, measurements: int) -> int:
    """The history length of a served model, after checking that it reads the Jena measurements."""
    if measurements != len(schema.MEASUREMENTS):
        raise ForecastError(
            f"the served model's {HISTORY} input has {measurements} measurements per hour, "
            f"a Jena CSV has {len(schema.MEASUREMENTS)}"
        )
    return lookback


@dataclass(frozen=True)
class ServedModel:
    """What GetModelMetadata tells of the version that answers: its number (None if the server does not
    say) and its history length in hours."""

    version: int | None
    lookback_hours: int


@dataclass
class Forecast:
    temperatures_degC: np.ndarray  # [batch], the median at the last hour
    valid_times: np.ndarray  # [batch], unix seconds of the last hour
    model_name: str
    version: int | None
    paths: np.ndarray | None = None  # [batch, hours], the medians of the hours +1 .. +horizon
    quantiles: np.ndarray | None = None  # [batch, hours, levels]
    levels: np.ndarray | None = None  # [batch, levels], the quantiles' levels


class GrpcForecaster:
    """PredictionService client for the served model's `serving_default` signature."""

    def __init__(
        self,
        target: str,
        model_name: str,
        timeout: float = TIMEOUT_SECONDS,
        credentials: grpc.ChannelCredentials | None = None,
    ):
        self.channel = grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.target, self.model_name, self.timeout = target, model_name, timeout

    def _metadata(self, version=None, label=None):
        """(the served `serving_default` SignatureDef, the version that answered), from GetModelMetadata."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        model_spec(request, self.model_name, version, label)
        response = self.stub.GetModelMetadata(request, timeout=self.timeout)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        if SIGNATURE not in signatures.signature_def:
            raise ForecastError(f"model {self.model_name} has no {SIGNATURE} signature")
        return signatures.signature_def[SIGNATURE], response.model_spec.version.value or None

    def signature(self, version=None, label=None):
        """The served `serving_default` SignatureDef, from GetModelMetadata."""
        return self._metadata(version, label)[0]

    def served_model(self, version=None, label=None) -> ServedModel:
        signature, served_version = self._metadata(version, label)
        dims = signature.inputs[HISTORY].tensor_shape.dim
        return ServedModel(served_version, history_shape(dims[1].size, dims[2].size))

    def predict(self, history, timestamps, version=None, label=None) -> Forecast:
        """history [batch, lookback, 14] float32 and timestamps [batch, lookback] int64 -> forecasts."""
        request = predict_request(self.model_name, history, timestamps, version, label)
        response = self.stub.Predict(request, timeout=self.timeout)
        hourly = {
            field: to_array(response.outputs[name])
            for field, name in HOURLY_OUTPUTS.items()
            if name in response.outputs
        }
        return Forecast(
            to_array(response.outputs[TEMPERATURE]),
            to_array(response.outputs[VALID_TIME]),
            response.model_spec.name,
            response.model_spec.version.value,
            **hourly,
        )

    def close(self):
        self.channel.close()


class RestForecaster:
    """The same over TensorFlow Serving's REST API (columnar `inputs` format)."""

    def __init__(self, target: str, model_name: str, timeout: float = TIMEOUT_SECONDS):
        self.base = f"http://{target}/v1/models/{model_name}"
        self.target, self.model_name, self.timeout = target, model_name, timeout
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

    def served_model(self, version=None, label=None) -> ServedModel:
        metadata = self._call("GET", self._url(version, label) + "/metadata")
        signature = metadata["metadata"]["signature_def"]["signature_def"][SIGNATURE]
        dims = signature["inputs"][HISTORY]["tensor_shape"]["dim"]
        served_version = metadata.get("model_spec", {}).get("version")  # an Int64Value: a JSON string
        return ServedModel(
            int(served_version) if served_version else None, history_shape(int(dims[1]["size"]), int(dims[2]["size"]))
        )

    def predict(self, history, timestamps, version=None, label=None) -> Forecast:
        body = {
            "signature_name": SIGNATURE,
            "inputs": {HISTORY: np.asarray(history).tolist(), TIMESTAMPS: np.asarray(timestamps).tolist()},
        }
        outputs = self._call("POST", self._url(version, label) + ":predict", json=body)["outputs"]
        hourly = {
            field: np.asarray(outputs[name], np.float32) for field, name in HOURLY_OUTPUTS.items() if name in outputs
        }
        return Forecast(
            np.asarray(outputs[TEMPERATURE], np.float32),
            np.asarray(outputs[VALID_TIME], np.int64),
            self.model_name,
            version,
            **hourly,
        )

    def close(self):
        self.session.close()


def _time(unix_seconds: int) -> str:
    return f"{pd.Timestamp(unix_seconds, unit='s'):%Y-%m-%d %H:%M}"


def forecast_answer(last_timestamp: int, forecast: Forecast) -> dict:
    """The first forecast of a batch as plain values: valid time, horizon, temperature, model and,
    from a model that forecasts every hour, the quantile levels and per hour (+1 .. +horizon) its
    valid time, median and quantiles."""
    valid_time = int(forecast.valid_times[0])
    answer = {
        "valid_time": _time(valid_time),
        "last_reading": _time(last_timestamp),
        "horizon_hours": (valid_time - last_timestamp) // 3600,
        "temperature_degC": round(float(forecast.temperatures_degC[0]), 2),
        "model_name": forecast.model_name,
        "version": forecast.version or None,
    }
    if forecast.paths is not None and forecast.quantiles is not None and forecast.levels is not None:
        hours = len(forecast.paths[0])
        answer["quantile_levels"] = [round(float(level), 4) for level in forecast.levels[0]]
        answer["hours"] = [
            {
                "hour": hour,
                "valid_time": _time(valid_time - (hours - hour) * 3600),
                "median_degC": round(float(median), 2),
                "quantiles_degC": [round(float(value), 2) for value in quantiles],
            }
            for hour, median, quantiles in zip(range(1, hours + 1), forecast.paths[0], forecast.quantiles[0])
        ]
    return answer


def forecast_line(answer: dict) -> str:
    version = f", version {answer['version']}" if answer["version"] else ""
    return (
        f"forecast for {answer['valid_time']} ({answer['horizon_hours']} h after the last reading at "
        f"{answer['last_reading']}): {answer['temperature_degC']:.1f} C (model {answer['model_name']}{version})"
    )


def tls_credentials(ca_file=None, cert_file=None, key_file=None) -> grpc.ChannelCredentials:
    """TLS for a gRPC channel: trust ``ca_file`` (else the system's CAs); present ``cert_file``/``key_file``."""
    if bool(cert_file) != bool(key_file):
        raise ValueError("a client certificate needs both its certificate and its key file")

    def read(path):
        with open(path, "rb") as handle:
            return handle.read()

    return grpc.ssl_channel_credentials(
        root_certificates=read(ca_file) if ca_file else None,
        private_key=read(key_file) if key_file else None,
        certificate_chain=read(cert_file) if cert_file else None,
    )


def forecast_table(answer: dict) -> str:
    """The hours ahead as a short table: hour, valid time, median and the band between the outer
    quantiles; the single line for a model that forecasts one hour only."""
    if "hours" not in answer:
        return forecast_line(answer)
    version = f", version {answer['version']}" if answer["version"] else ""
    low, high = answer["quantile_levels"][0], answer["quantile_levels"][-1]
    band = f"{low:.0%}-{high:.0%} band"
    lines = [
        f"forecast after the last reading at {answer['last_reading']} (model {answer['model_name']}{version})",
        f"{'hour':>5}  {'valid time':<16}  {'median':>7}  {band:>15}",
    ]
    for hour in answer["hours"]:
        quantiles = hour["quantiles_degC"]
        lines.append(
            f"{'+' + str(hour['hour']) + ' h':>5}  {hour['valid_time']:<16}  {hour['median_degC']:>5.1f} C  "
            f"{quantiles[0]:>5.1f} .. {quantiles[-1]:>5.1f} C"
        )
    return "\n".join(lines)


def add_request_options(parser: argparse.ArgumentParser) -> None:
    """The options of every command that asks a served model from a readings file: the CSV, the model
    (name or card), the server (target, REST or gRPC with TLS), the version and the gap filling."""
    parser.add_argument("csv", help="Jena-format CSV with at least the model's history (the last 5 days)")
    parser.add_argument(
        "--model-name", help="the served model's name (params.yaml: serving.model_name); default: the model card's"
    )
    parser.add_argument(
        "--model-card",
        metavar="PATH",
        help="an exported version (directory) or its assets.extra/model_card.json: the model's name, "
        "its measurements' order and its gap filling (max_fill_hours) are taken from it",
    )
    parser.add_argument("--target", default=None, help="host:port (default localhost:8500, or :8501 with --rest)")
    parser.add_argument("--rest", action="store_true", help="use the REST API instead of gRPC")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--version", type=int, help="ask this exact version")
    which.add_argument("--label", help="ask the version with this label (e.g. stable)")
    parser.add_argument(
        "--max-fill-hours",
        type=int,
        default=None,
        help="interpolate gaps of up to this many hours in the readings "
        "(default: the model card's, without one 0: none)",
    )
    tls = parser.add_argument_group("TLS (gRPC)")
    tls.add_argument("--tls", action="store_true", help="use TLS (implied by the options below)")
    tls.add_argument("--tls-ca", help="PEM file of the CA that signed the server's certificate (default: system CAs)")
    tls.add_argument("--tls-cert", help="PEM file of a client certificate, for servers that verify clients")
    tls.add_argument("--tls-key", help="PEM file of the client certificate's private key")


def check_request_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """`add_request_options`' rules between options (exits through `parser.error`); fills in --tls and --target."""
    args.tls = args.tls or any((args.tls_ca, args.tls_cert, args.tls_key))
    if args.tls and args.rest:
        parser.error("--tls applies to gRPC; TF Serving's REST API is plain HTTP")
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if not (args.model_name or args.model_card):
        parser.error("say which model: --model-name NAME or --model-card PATH")
    args.target = args.target or ("localhost:8501" if args.rest else "localhost:8500")
    return args


def model_card_of(args: argparse.Namespace) -> ModelCard:
    """The --model-card's card, or without one a card naming --model-name with the Jena CSV's order and no
    gap filling; --max-fill-hours overrides the card's. ForecastError for an unreadable card."""
    if args.model_card:
        card = read_model_card(args.model_card)
    else:
        card = ModelCard(args.model_name, schema.MEASUREMENTS, 0)
    if args.max_fill_hours is not None:
        card.max_fill_hours = args.max_fill_hours
    return card


def forecaster_of(args: argparse.Namespace, model_name: str, timeout: float = TIMEOUT_SECONDS):
    """A GrpcForecaster (with the TLS options) or RestForecaster for --target; OSError for a missing PEM file."""
    if args.rest:
        return RestForecaster(args.target, model_name, timeout)
    credentials = tls_credentials(args.tls_ca, args.tls_cert, args.tls_key) if args.tls else None
    return GrpcForecaster(args.target, model_name, timeout, credentials)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m forecast.client", description=__doc__.split("\n\n")[0])
    add_request_options(parser)
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--brief", action="store_true", help="print only the last hour's forecast, on one line")
    output.add_argument(
        "--json",
        action="store_true",
        help="print the answer as a JSON object, every hour's median and quantiles included",
    )
    return check_request_options(parser, parser.parse_args(argv))


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        card = model_card_of(args)
        forecaster = forecaster_of(args, args.model_name or card.model_name)
    except OSError as error:
        print(f"client: {error.filename}: {error.strerror}", file=sys.stderr)
        return 2
    except ForecastError as error:
        print(f"client: {error}", file=sys.stderr)
        return 2
    try:
        readings = read_raw_csv(args.csv)
        lookback = forecaster.served_model(args.version, args.label).lookback_hours
        history, timestamps = latest_window(readings, lookback, card.max_fill_hours, card.measurements)
        forecast = forecaster.predict(history[None], timestamps[None], args.version, args.label)
    except FileNotFoundError:
        print(f"client: {args.csv}: no such file", file=sys.stderr)
        return 2
    except (InvalidData, ForecastError) as error:
        print(f"client: {error}", file=sys.stderr)
        return 2
    except grpc.RpcError as error:
        print(f"client: {args.target}: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    except requests.RequestException as error:
        print(f"client: {args.target}: {error}", file=sys.stderr)
        return 1
    finally:
        forecaster.close()
    answer = forecast_answer(int(timestamps[-1]), forecast)
    print(json.dumps(answer) if args.json else forecast_line(answer) if args.brief else forecast_table(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
