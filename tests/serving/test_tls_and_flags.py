"""TLS on the gRPC port (``--ssl_config_file``) and startup refusals.

TF Serving applies its SSLConfig to every gRPC listening address (TCP port and
UNIX socket) and leaves the REST API plain HTTP; so does this server. The
certificates come from a throwaway CA made in the test (``tests/helpers/tls.py``).

A server that must refuse to start (a config file that does not parse, an
unsupported flag) says why on stderr, exits non-zero, and never binds its
ports: the test holds both ports itself, so a server that tried to bind them
would fail with a different error instead.
"""

import contextlib
import socket
import subprocess
import sys

import grpc
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.helpers.model_server import ServerProcess
from tests.helpers.repository import REPO_ROOT
from tests.helpers.tls import make_tls_files

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def credentials(tls_files, ca="ca", client=None):
    return grpc.ssl_channel_credentials(
        root_certificates=(tls_files / f"{ca}.pem").read_bytes() if ca else None,
        private_key=(tls_files / f"{client}.key").read_bytes() if client else None,
        certificate_chain=(tls_files / f"{client}.pem").read_bytes() if client else None,
    )


def half_plus_two_request():
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([[2.0]], dtype=tf.float32))
    return request


def predict(channel) -> list:
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(half_plus_two_request(), timeout=10)
    return tf.make_ndarray(response.outputs["y"]).tolist()


def refused(channel) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        predict(channel)
    return caught.value.code()


def serve_half_plus_two(directory, generated_testdata, *flags, channel_credentials=None):
    return ServerProcess(
        directory,
        f"--model_base_path={generated_testdata / 'saved_model_half_plus_two_cpu'}",
        *flags,
        channel_credentials=channel_credentials,
    )


# ------------------------------------------------------------------------ TLS
def test_server_tls_encrypts_grpc_and_leaves_rest_plain(tls_files, generated_testdata, tmp_path):
    socket_path = tmp_path / "grpc.sock"
    server = serve_half_plus_two(
        tmp_path,
        generated_testdata,
        f"--ssl_config_file={tls_files / 'ssl.config'}",
        f"--grpc_socket_path={socket_path}",
        channel_credentials=credentials(tls_files),
    )
    try:
        assert predict(server.channel) == [[3.0]]
        unix_options = (("grpc.default_authority", "localhost"),)
        with grpc.secure_channel(f"unix:{socket_path}", credentials(tls_files), options=unix_options) as channel:
            assert predict(channel) == [[3.0]]
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            assert refused(channel) == grpc.StatusCode.UNAVAILABLE  # plaintext client
        with grpc.insecure_channel(f"unix:{socket_path}") as channel:
            assert refused(channel) == grpc.StatusCode.UNAVAILABLE
        with grpc.secure_channel(f"127.0.0.1:{server.port}", credentials(tls_files, ca=None)) as channel:
            assert refused(channel) == grpc.StatusCode.UNAVAILABLE  # a client that does not trust our CA
        answer = requests.post(f"{server.rest}/v1/models/default:predict", json={"instances": [[2.0]]}, timeout=10)
        assert answer.json() == {"predictions": [[3.0]]}  # REST: plain HTTP, as in TF Serving
        assert "Using SSL credentials" in server.log_text()
    finally:
        assert server.stop() == 0


def test_mutual_tls_requires_a_client_certificate_from_the_custom_ca(tls_files, generated_testdata, tmp_path):
    server = serve_half_plus_two(
        tmp_path,
        generated_testdata,
        f"--ssl_config_file={tls_files / 'mtls.config'}",
        channel_credentials=credentials(tls_files, client="client"),
    )
    try:
        assert predict(server.channel) == [[3.0]]
        target = f"127.0.0.1:{server.port}"
        with grpc.secure_channel(target, credentials(tls_files)) as channel:
            assert refused(channel) == grpc.StatusCode.UNAVAILABLE  # no client certificate
        with grpc.secure_channel(target, credentials(tls_files, client="stranger")) as channel:
            assert refused(channel) == grpc.StatusCode.UNAVAILABLE  # signed by another CA
        with grpc.insecure_channel(target) as channel:
            assert refused(channel) == grpc.StatusCode.UNAVAILABLE
    finally:
        assert server.stop() == 0


# ------------------------------------------------------ refusing to start
@contextlib.contextmanager
def held_ports():
    """Two loopback ports this process listens on: a server that tried to bind them would fail."""
    with socket.socket() as grpc_holder, socket.socket() as rest_holder:
        for holder in (grpc_holder, rest_holder):
            holder.bind(("127.0.0.1", 0))
            holder.listen()
        yield grpc_holder.getsockname()[1], rest_holder.getsockname()[1]


def run_with_ports_held(*flags: str) -> subprocess.CompletedProcess:
    """Runs a server process to its exit while this process holds its gRPC and REST ports."""
    with held_ports() as (grpc_port, rest_port):
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "serving.model_server",
                f"--port={grpc_port}",
                f"--rest_api_port={rest_port}",
                *flags,
            ],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=180,
        )


def test_a_server_that_starts_would_be_seen_binding_held_ports(tmp_path):
    """The control for the tests below: a valid start does try the held ports, and fails there."""
    (tmp_path / "empty").mkdir()
    result = run_with_ports_held(f"--model_base_path={tmp_path / 'empty'}")
    assert result.returncode != 0
    assert "Failed to start server. Error: Failed to bind" in result.stderr


def test_a_model_config_file_that_does_not_parse_stops_startup_before_any_port(testdata):
    """tensorflow_model_server_test.py::testBadModelConfig (its wording on stderr), and no port is bound."""
    bad = testdata / "bad_model_config.txt"
    result = run_with_ports_held(f"--model_config_file={bad}")
    assert result.returncode != 0
    assert (
        "Error parsing text-format tensorflow.serving.ModelServerConfig: 1:1: "
        'Message type "tensorflow.serving.ModelServerConfig" has no field named "improperly".'
    ) in result.stderr
    assert f"Failed to start server. Error: INVALID_ARGUMENT: Invalid protobuf file: '{bad}'" in result.stderr
    assert "bind" not in result.stderr


@pytest.mark.parametrize(
    "config_text, wording",
    [
        ("server_key: 1 2 3", "Error parsing text-format tensorflow.serving.SSLConfig: 1:13: "),
        ('server_cert: "PEM"', "Error: INVALID_ARGUMENT: SSLConfig in '{path}' has no server_key"),
    ],
)
def test_an_unusable_ssl_config_stops_startup_before_any_port(generated_testdata, tmp_path, config_text, wording):
    path = tmp_path / "ssl.config"
    path.write_text(config_text)
    result = run_with_ports_held(
        f"--ssl_config_file={path}", f"--model_base_path={generated_testdata / 'saved_model_half_plus_two_cpu'}"
    )
    assert result.returncode != 0
    assert wording.format(path=path) in result.stderr
    assert "bind" not in result.stderr


@pytest.mark.parametrize(
    "flags, wording",
    [
        (
            ["--use_alts_credentials", "--ssl_config_file=ssl.config"],
            "Error: INVALID_ARGUMENT: Either use_alts_credentials must be false or ssl_config_file must be empty.",
        ),
        (
            ["--batching_parameters_file=batching.config"],
            "server_options.batching_parameters_file is set without setting server_options.enable_batching to true.",
        ),
        (
            [
                "--tensorflow_intra_op_parallelism=1",
                "--tensorflow_inter_op_parallelism=1",
                "--tensorflow_session_parallelism=1",
            ],
            "You cannot configure all.",
        ),
        (["--use_alts_credentials"], "--use_alts_credentials=True is not supported by this ModelServer"),
        (
            ["--platform_config_file=platform.config"],
            "Error: UNIMPLEMENTED: --platform_config_file=platform.config is not supported by this ModelServer",
        ),
        (
            ["--enable_batching", "--enable_per_model_batching_parameters"],
            "--enable_per_model_batching_parameters=True is not supported by this ModelServer",
        ),
        (
            ["--tensorflow_session_config_file={session_config}"],
            "sets allow_soft_placement, gpu_options, which this ModelServer cannot apply",
        ),
    ],
)
def test_flags_that_would_be_ignored_stop_startup(generated_testdata, tmp_path, capsys, flags, wording):
    """In this process (these checks come before TensorFlow or gRPC is used), with the ports held all the same."""
    from serving import model_server

    session_config = tmp_path / "session.config"
    session_config.write_text(
        "intra_op_parallelism_threads: 1 allow_soft_placement: true gpu_options { allow_growth: true }"
    )
    with held_ports() as (grpc_port, rest_port):
        try:
            returncode = model_server.main(
                [
                    f"--port={grpc_port}",
                    f"--rest_api_port={rest_port}",
                    *(flag.format(session_config=session_config) for flag in flags),
                    f"--model_base_path={generated_testdata / 'saved_model_half_plus_two_cpu'}",
                ]
            )
        finally:
            model_server.log.handlers.clear()  # main() logs to this test's captured stderr
    stderr = capsys.readouterr().err
    assert returncode == 1
    assert wording in stderr
    assert "bind" not in stderr and "Adding model" not in stderr


def test_session_config_threads_are_applied(generated_testdata, tmp_path):
    session_config = tmp_path / "session.config"
    session_config.write_text("intra_op_parallelism_threads: 1 inter_op_parallelism_threads: 1")
    server = serve_half_plus_two(tmp_path, generated_testdata, f"--tensorflow_session_config_file={session_config}")
    try:
        assert predict(server.channel) == [[3.0]]
        assert "TensorFlow threads from --tensorflow_session_config_file: intra_op 1, inter_op 1" in server.log_text()
    finally:
        assert server.stop() == 0
