"""TF Serving's REST handler tests (model_servers/http_rest_api_handler_test.cc), over HTTP against our server.

The C++ test builds its handler in-process over a server core serving half_plus_two as
``saved_model_half_plus_two_2_versions`` with version 123 only and the label ``Version_Label`` -> 123; so
does ``server`` here (our manager, REST API and HTTP server in this process, as the ModelServer wires them),
on the model ``tests/helpers/tfserving_testdata.py`` builds. Each test names the C++ test it ports
(``Suite.Name``, matched by ``tests/helpers/tf_serving_coverage.py``). The routing of TF Serving's HTTP
server (``http_server.cc``: which paths reach the handler, CORS, methods) is checked on a server over a
manager with no models.
"""

import gzip
import http.client
import json
import socket

import pytest
import requests
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from serving.manager import ManagerOptions, ModelManager
from serving.monitoring import Metrics
from serving.rest_server import RestApi, RestServer, libevent_error_page

MODEL = "saved_model_half_plus_two_2_versions"
LABEL = "Version_Label"


@pytest.fixture(scope="module")
def server(generated_testdata):
    """Version 123 of the model and its label, served over HTTP on a free loopback port (``.rest``)."""
    config = text_format.Parse(
        f'model_config_list {{ config {{ name: "{MODEL}" base_path: "{generated_testdata / MODEL}" '
        f'model_platform: "tensorflow" model_version_policy {{ specific {{ versions: 123 }} }} '
        f'version_labels {{ key: "{LABEL}" value: 123 }} }} }}',
        model_server_config_pb2.ModelServerConfig(),
    )
    manager = ModelManager(ManagerOptions(file_system_poll_wait_seconds=0))
    manager.apply_config(config)  # returns once the version is loaded, as the ModelServer's startup waits
    http_server = RestServer(
        RestApi(manager, Metrics(), None), "127.0.0.1", 0, num_threads=4, timeout_ms=30000, enable_cors=False
    )
    http_server.start()
    http_server.rest = f"http://127.0.0.1:{http_server.port}"
    yield http_server
    http_server.stop()
    manager.stop()


def call(server, method: str, path: str, body: str = "") -> tuple[int, dict, str]:
    answer = requests.request(method, f"{server.rest}{path}", data=body.encode(), timeout=30)
    return answer.status_code, answer.headers, answer.text


def error_of(server, method: str, path: str, body: str = "") -> tuple[int, str]:
    status, _, text = call(server, method, path, body)
    return status, json.loads(text)["error"]


def answer_of(server, path: str, body: str = "", method: str = "POST") -> dict:
    """A successful answer's JSON; the handler's only header is Content-Type: application/json."""
    status, headers, text = call(server, method, path, body)
    assert status == 200, text
    assert headers["Content-Type"] == "application/json"
    assert set(headers) == {"Content-Type", "Content-Length", "Date"}
    document = json.loads(text)
    assert "error" not in document  # MakeJsonFromTensors.StatusOK: no error is written for OK
    return document


def test_path_regex(server):
    """HttpRestApiHandlerTest.kPathRegex: /v1/... reaches the handler, other paths do not."""
    assert error_of(server, "GET", "/v1/models") == (400, "Missing model name in request.")
    for path in ("/statuspage", "/index"):
        status, headers, text = call(server, "GET", path)
        assert (status, text) == (404, libevent_error_page(404))
        assert headers["Connection"] == "close"


@pytest.mark.parametrize(
    "method, path, wording",
    [
        ("GET", "/v1/foo", "Malformed request"),
        ("POST", "/v1/foo", "Malformed request"),
        ("GET", "/v1/models", "Missing model name"),
        ("GET", "/v1/models/debug/model_name", "Malformed request"),
        ("POST", "/v1/models", "Malformed request"),
        ("GET", "/v1/models/foo:predict", "Malformed request"),
        ("GET", "/v1/models/foo/version/50:predict", "Malformed request"),
        ("POST", "/v1/models/foo/version/50:regress", "Malformed request"),
        ("POST", "/v1/models/foo/versions/HELLO:regress", "Malformed request"),
        ("POST", "/v1/models/foo/versions/18446744073709551615:regress", "Failed to convert version"),
        ("POST", "/v1/models/foo/metadata", "Malformed request"),
        ("POST", "/v1/models/foo/label/some_label:regress", "Malformed request"),
        ("POST", "/v1/models/foo/versions/50/labels/some_label:regress", "Malformed request"),
        ("POST", "/v1/models/foo/versions/some_label:regress", "Malformed request"),
    ],
)
def test_unsupported_api_calls(server, method, path, wording):
    """HttpRestApiHandlerTest.UnsupportedApiCalls"""
    status, message = error_of(server, method, path)
    assert status == 400 and wording in message


def test_unsupported_api_calls_name_the_request(server):
    """http_rest_api_handler.cc's wording: the method and the path, query string included, as received."""
    assert error_of(server, "PUT", "/v1/models/foo") == (400, "Malformed request: PUT /v1/models/foo")
    assert error_of(server, "POST", f"/v1/models/{MODEL}:predict?x=1") == (
        400,
        f"Malformed request: POST /v1/models/{MODEL}:predict?x=1",
    )


@pytest.mark.parametrize(
    "path", ["/v1/models/foo:predict", "/v1/models/foo/versions/50:predict", f"/v1/models/{MODEL}99:predict"]
)
def test_predict_model_name_version_errors(server, path):
    """HttpRestApiHandlerTest.PredictModelNameVersionErrors"""
    assert error_of(server, "POST", path, '{ "instances": [1] }')[0] == 404


@pytest.mark.parametrize(
    "path, body, wording",
    [
        (f"/v1/models/{MODEL}:predict", "", "JSON Parse error: The document is empty"),
        (f"/v1/models/{MODEL}:predict", "instances = [1, 2]", "JSON Parse error: Invalid value"),
        (f"/v1/models/{MODEL}:predict", '{ "instances": ["x", "y"] }', "not of expected type: float"),
        (
            f"/v1/models/{MODEL}/labels/Version_Nonexistent:predict",
            '{ "instances": ["x", "y"] }',
            "Unrecognized servable version label",
        ),
        (f"/v1/models/{MODEL}:predict", '{ "signature_name": 100 }', "'signature_name' key must be a string value."),
    ],
)
def test_predict_request_errors(server, path, body, wording):
    """HttpRestApiHandlerTest.PredictRequestErrors"""
    status, message = error_of(server, "POST", path, body)
    assert status == 400 and wording in message


def test_predict(server):
    """HttpRestApiHandlerTest.Predict"""
    assert answer_of(server, f"/v1/models/{MODEL}:predict", '{"instances": [[1.0, 2.0], [3.0, 4.0]]}') == {
        "predictions": [[2.5, 3.0], [3.5, 4.0]]
    }
    for spec in ("/versions/123", f"/labels/{LABEL}"):
        assert answer_of(server, f"/v1/models/{MODEL}{spec}:predict", '{"instances": [1.0, 2.0]}') == {
            "predictions": [2.5, 3.0]
        }
    assert answer_of(
        server,
        f"/v1/models/{MODEL}/versions/123:predict",
        '{"signature_name": "serving_default", "instances": [3.0, 4.0]}',
    ) == {"predictions": [3.5, 4.0]}
    assert answer_of(
        server,
        f"/v1/models/{MODEL}/versions/123:predict",
        '{"signature_name": "serving_default", "inputs": [3.0, 4.0]}',
    ) == {"outputs": [3.5, 4.0]}


def test_gzip_bodies_are_inflated(server):
    """evhttp_request.cc's ReadRequestGzipBytes: a body sent with Content-Encoding gzip is inflated; one that
    does not inflate reads as empty."""
    path = f"{server.rest}/v1/models/{MODEL}:predict"
    answer = requests.post(
        path, data=gzip.compress(b'{"instances": [1.0, 2.0]}'), headers={"Content-Encoding": "gzip"}, timeout=30
    )
    assert (answer.status_code, answer.json()) == (200, {"predictions": [2.5, 3.0]})
    refused = requests.post(path, data=b'{"instances": [1.0]}', headers={"Content-Encoding": "gzip"}, timeout=30)
    assert (refused.status_code, refused.json()) == (400, {"error": "JSON Parse error: The document is empty"})


def test_regress(server):
    """HttpRestApiHandlerTest.Regress"""
    body = '{"signature_name": "regress_x_to_y", "examples": [ { "x": 80.0 } ] }'
    for spec in ("", "/versions/123", f"/labels/{LABEL}"):
        assert answer_of(server, f"/v1/models/{MODEL}{spec}:regress", body) == {"results": [42]}


def test_classify(server):
    """HttpRestApiHandlerTest.Classify"""
    assert answer_of(
        server, f"/v1/models/{MODEL}:classify", '{"signature_name": "classify_x_to_y", "examples": [ { "x": 20.0 } ] }'
    ) == {"results": [[["", 12]]]}
    assert answer_of(
        server,
        f"/v1/models/{MODEL}/labels/{LABEL}:classify",
        '{"signature_name": "classify_x_to_y", "examples": [ { "x": 10.0 } ] }',
    ) == {"results": [[["", 7]]]}


def test_get_status(server):
    """HttpRestApiHandlerTest.GetStatus"""
    expected = {
        "model_version_status": [
            {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    for spec in ("", "/versions/123", f"/labels/{LABEL}"):
        assert answer_of(server, f"/v1/models/{MODEL}{spec}", method="GET") == expected


def test_get_model_metadata(server, generated_testdata):
    """HttpRestApiHandlerTest.GetModelMetadata"""
    expected = json.loads((generated_testdata / f"{MODEL}_metadata.json").read_text())
    assert answer_of(server, f"/v1/models/{MODEL}/metadata", method="GET") == expected


def test_errors_are_json_with_the_message_as_is(server):
    """MakeJsonFromTensors.StatusError: double and single quotes in a message survive the JSON."""
    assert error_of(server, "POST", f"/v1/models/{MODEL}:predict", '{"signature_name": "nope", "instances": [1]}') == (
        400,
        'Serving signature name: "nope" not found in signature def',
    )
    assert error_of(server, "POST", f"/v1/models/{MODEL}:predict", '{"values": [1]}') == (
        400,
        "Missing 'inputs' or 'instances' key",
    )


def test_classify_body_is_read_before_the_model_is_looked_up(server):
    """http_rest_api_handler.cc fills the whole request from JSON before it asks for the servable."""
    assert error_of(server, "POST", "/v1/models/missing:classify", '{"examples": 5}') == (
        400,
        "JSON Value: {\n    \"examples\": 5\n} Expecting 'examples' value to be an list/array",
    )


def test_model_name_and_label_are_percent_decoded(server):
    """http_rest_api_util.cc decodes the name and the label with curl_easy_unescape."""
    name = MODEL.replace("_", "%5F")
    assert answer_of(server, f"/v1/models/{name}/labels/Version%5FLabel:predict", '{"instances": [1.0]}') == {
        "predictions": [2.5]
    }


# --------------------------------------------- http_server.cc routing, in process
@pytest.fixture(scope="module")
def routing_server():
    """The HTTP server with CORS support and the metrics path, over a manager with no models."""
    manager = ModelManager(ManagerOptions(file_system_poll_wait_seconds=0))
    server = RestServer(
        RestApi(manager, Metrics(), "/metrics"), "127.0.0.1", 0, num_threads=2, timeout_ms=5000, enable_cors=True
    )
    server.start()
    yield f"http://127.0.0.1:{server.port}"
    server.stop()


CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, GET",
    "Access-Control-Allow-Headers": "Content-Type",
}


def test_cors_preflight_and_headers(routing_server):
    """http_server.cc: OPTIONS needs an http(s) Origin, and every answer of the handler carries the CORS headers."""
    preflight = requests.options(f"{routing_server}/v1/models/x:predict", headers={"Origin": "https://a.example"})
    assert (preflight.status_code, preflight.text) == (200, "")
    assert CORS_HEADERS.items() <= preflight.headers.items()
    refused = requests.options(f"{routing_server}/v1/models/x:predict")
    assert (refused.status_code, refused.text) == (400, "")
    answer = requests.get(f"{routing_server}/v1/models/x")
    assert answer.status_code == 404 and CORS_HEADERS.items() <= answer.headers.items()


def test_metrics_path_is_matched_without_its_query(routing_server):
    """http_server.cc's ProcessPrometheusRequest: any method; a query string is refused as an unexpected path."""
    assert requests.post(f"{routing_server}/metrics").headers["Content-Type"] == "text/plain"
    refused = requests.get(f"{routing_server}/metrics?x=1")
    assert (refused.status_code, refused.text) == (400, "Unexpected path: /metrics?x=1. Should be /metrics")


def test_methods_libevent_refuses(routing_server):
    """evhttp_server.cc allows GET, POST, HEAD, PUT, DELETE, OPTIONS and PATCH; libevent answers others with 501."""
    port = int(routing_server.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"TRACE /v1/models/x HTTP/1.1\r\nHost: x\r\n\r\n")
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert (response.status, response.read().decode()) == (501, libevent_error_page(501))
    assert requests.delete(f"{routing_server}/v1/models/x").json() == {
        "error": "Malformed request: DELETE /v1/models/x"
    }
