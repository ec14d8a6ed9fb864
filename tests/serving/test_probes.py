"""The Kubernetes probes of deploy/k8s on the ModelServer: ready only once a version is AVAILABLE.

TF Serving's status route (`GET /v1/models/NAME`, the liveness probe) answers
200 while a version is still LOADING; GetModelMetadata (`.../metadata`, the
readiness and startup probes) needs a servable handle, which only an AVAILABLE
version gives, so it fails until then. The paths come from the base
Deployment, with our test model's name in place of the served model's.
"""

import time

import pytest
import requests
import yaml

from tests.helpers.model_server import ServerProcess, install_version, with_warmup_requests
from tests.helpers.repository import REPO_ROOT
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.slow
DEPLOYMENT = REPO_ROOT / "deploy/k8s/base/deployment.yaml"
SERVED_MODEL = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())["serving"]["model_name"]


def probe_paths(model_name: str) -> dict[str, str]:
    (serving,) = [
        item
        for item in yaml.safe_load(DEPLOYMENT.read_text())["spec"]["template"]["spec"]["containers"]
        if item["name"] == "tensorflow-serving"
    ]
    return {
        probe: serving[probe]["httpGet"]["path"].replace(f"/{SERVED_MODEL}", f"/{model_name}")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe")
    }


def passes(response) -> bool:
    return 200 <= response.status_code < 400  # what the kubelet counts as success


def test_readiness_fails_until_a_version_is_available_while_liveness_passes_during_loading(model_factory, tmp_path):
    paths = probe_paths("linear")
    assert paths["startupProbe"] == paths["readinessProbe"] == "/v1/models/linear/metadata"
    assert paths["livenessProbe"] == "/v1/models/linear"
    base = tmp_path / "linear"
    base.mkdir()
    server = ServerProcess(
        tmp_path, "--model_name=linear", f"--model_base_path={base}", "--file_system_poll_wait_seconds=1"
    )
    try:
        ready = lambda: requests.get(server.rest + paths["readinessProbe"], timeout=5)  # noqa: E731
        alive = lambda: requests.get(server.rest + paths["livenessProbe"], timeout=5)  # noqa: E731
        assert not passes(ready()), "ready without any version"

        # Warm-up replays (1000 records, TF Serving's maximum) keep the version LOADING for a while.
        install_version(base, 1, with_warmup_requests(model_factory("linear"), tmp_path / "staging", 1000))
        loading_seen, deadline = False, time.monotonic() + 90
        while time.monotonic() < deadline:
            readiness = ready()
            liveness = alive()  # asked after readiness: LOADING now means not yet AVAILABLE then
            state = _state(liveness)
            if state == "LOADING":
                assert passes(liveness) and not passes(readiness), (liveness.text, readiness.text)
                loading_seen = True
            elif state == "AVAILABLE":
                break
            time.sleep(0.02)
        assert loading_seen, "the version loaded before a probe could see it LOADING"
        wait_for(lambda: passes(ready()), timeout=60, message="readiness once version 1 is AVAILABLE")
        assert _state(alive()) == "AVAILABLE" and passes(alive())
    finally:
        server.stop()


def _state(response) -> str | None:
    if response.status_code != 200:
        return None
    (status,) = response.json()["model_version_status"]
    return status["state"]
