"""The deployment files: Kubernetes manifests, the sync image, KServe and docker compose.

`kubectl kustomize` renders deploy/k8s/base and both overlays, and every
rendered object must pass the Kubernetes OpenAPI schema (kubernetes-validate,
strict: a misspelt field fails) of the oldest and the newest Kubernetes we
support. Then their content: TF Serving's image is the release of the
tensorflow pinned in constraints.txt, the flags, probes and ports, the model
name and base paths agree with params.yaml and serving/models.config, the S3
sidecar mirrors into the directory TF Serving watches (its command lines run
against moto's S3 on 127.0.0.1), and rollouts and drains keep capacity.
Offline and fast: nothing is applied to a cluster.
"""

import ast
import importlib.metadata
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers.manifests import (
    K8S_DIR,
    KUBERNETES_VERSIONS,
    KUSTOMIZATIONS,
    MODEL_NAME,
    MODELS_CONFIG,
    TF_SERVING_IMAGE,
    TF_VERSION,
    container,
    container_environment,
    expand,
    flags,
    needs_kubectl,
    only,
    parse_models_config,
    pinned_version,
    pod_spec,
    rendered,
    requirement_closure,
    served_models_config,
    validate,
)
from tests.helpers.repository import REPO_ROOT

# --- schema -----------------------------------------------------------------------------------------------------


@needs_kubectl
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_rendered_object_passes_the_kubernetes_schema(kustomization, version):
    objects = rendered(kustomization)
    assert {"ServiceAccount", "ConfigMap", "Service", "Deployment", "PodDisruptionBudget"} <= {
        item["kind"] for item in objects
    }
    for document in objects:
        validate(document, version)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifest_files_pass_the_schema(version):
    """Without kubectl too: every complete object in the base's files (overlay files are patches)."""
    base = yaml.safe_load((K8S_DIR / "base/kustomization.yaml").read_text())
    kinds = set()
    for name in base["resources"]:
        for document in yaml.safe_load_all((K8S_DIR / "base" / name).read_text()):
            validate(document, version)
            kinds.add(document["kind"])
    assert {"Deployment", "Service", "PodDisruptionBudget"} <= kinds


# --- TF Serving: image, flags, probes --------------------------------------------------------------------------


@needs_kubectl
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_tf_serving_runs_the_release_of_the_pinned_tensorflow_with_its_flags(kustomization):
    spec = pod_spec(kustomization)
    serving = container(spec, "tensorflow-serving")
    assert serving["image"] == TF_SERVING_IMAGE
    for item in spec["containers"] + spec.get("initContainers", []):
        repository, _, tag = item["image"].rpartition(":")
        assert repository and tag and tag != "latest" and "/" not in tag, f"{item['name']}: unpinned {item['image']}"

    assert serving["command"] == ["tensorflow_model_server"]
    options = flags(serving["args"])
    ports = {port["name"]: port["containerPort"] for port in serving["ports"]}
    assert (int(options["--port"]), int(options["--rest_api_port"])) == (ports["grpc"], ports["http"]) == (8500, 8501)
    assert int(options["--model_config_file_poll_wait_seconds"]) >= 30
    assert len(options) == len([arg for arg in serving["args"] if arg.startswith("--")]), "a flag given twice"

    (model,) = served_models_config(kustomization).model_config_list.config
    assert model.name == MODEL_NAME
    reads_object_storage = "://" in model.base_path
    # Each poll is a LIST per replica: a billed request on object storage.
    assert int(options["--file_system_poll_wait_seconds"]) >= (30 if reads_object_storage else 1)


@needs_kubectl
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_probes_ask_tf_serving_for_an_available_version(kustomization):
    serving = container(pod_spec(kustomization), "tensorflow-serving")
    # GetModelMetadata needs an AVAILABLE version (404 before); the status route answers in every state.
    for probe in ("readinessProbe", "startupProbe"):
        assert serving[probe]["httpGet"] == {"path": f"/v1/models/{MODEL_NAME}/metadata", "port": "http"}, probe
    assert serving["livenessProbe"]["httpGet"] == {"path": f"/v1/models/{MODEL_NAME}", "port": "http"}
    startup = serving["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "too little time for a first load"
    assert serving["resources"]["requests"] and serving["resources"]["limits"]


# --- models.config ---------------------------------------------------------------------------------------------


@needs_kubectl
@pytest.mark.parametrize("kustomization", ["base", "overlays/s3"])
def test_local_versions_use_serving_models_config_unchanged(kustomization):
    assert served_models_config(kustomization) == parse_models_config(MODELS_CONFIG.read_text())


@needs_kubectl
def test_gcs_overlay_reads_versions_from_gcs_with_a_secret_key():
    config = served_models_config("overlays/gcs")
    (model,) = config.model_config_list.config
    assert re.fullmatch(rf"gs://[a-z0-9][a-z0-9._-]+/(.+/)?{MODEL_NAME}", model.base_path), model.base_path
    expected = parse_models_config(MODELS_CONFIG.read_text())
    expected.model_config_list.config[0].base_path = model.base_path
    assert config == expected, "the GCS config differs from serving/models.config in more than base_path"

    spec = pod_spec("overlays/gcs")
    serving = container(spec, "tensorflow-serving")
    key_file = Path(container_environment("overlays/gcs", serving)["GOOGLE_APPLICATION_CREDENTIALS"])
    (mount,) = [item for item in serving["volumeMounts"] if item["mountPath"] == str(key_file.parent)]
    (volume,) = [item for item in spec["volumes"] if item["name"] == mount["name"]]
    assert volume["secret"]["secretName"] and mount["readOnly"]
    assert "/models" not in {item["mountPath"] for item in serving["volumeMounts"]}


@needs_kubectl
def test_s3_overlay_mirrors_into_the_directory_tf_serving_watches():
    spec = pod_spec("overlays/s3")
    (model,) = served_models_config("overlays/s3").model_config_list.config
    serving = container(spec, "tensorflow-serving")
    once = container(spec, "model-sync-once", init=True)
    sidecar = container(spec, "model-sync")

    for sync, mode in ((once, "--once"), (sidecar, "--poll_seconds")):
        assert sync["command"] == ["python", "-m", "serving.sync"]
        assert sync["image"] == container(spec, "model-sync")["image"]
        environment = container_environment("overlays/s3", sync)
        source, destination, *options = [expand(arg, environment) for arg in sync["args"]]
        assert re.fullmatch(rf"s3://[a-z0-9][a-z0-9.-]+/(.+/)?{MODEL_NAME}", source), source
        assert destination == model.base_path, "the sync writes where TF Serving does not look"
        assert any(option.split("=")[0] == mode for option in options), options
        # The same emptyDir: writable for the sync, read-only for TF Serving.
        (mount,) = [item for item in sync["volumeMounts"] if destination.startswith(item["mountPath"] + "/")]
        (watched,) = [item for item in serving["volumeMounts"] if item["name"] == mount["name"]]
        assert watched["mountPath"] == mount["mountPath"] and watched["readOnly"] and not mount.get("readOnly")
        (volume,) = [item for item in spec["volumes"] if item["name"] == mount["name"]]
        assert "emptyDir" in volume
        credentials = {item["name"]: item["valueFrom"]["secretKeyRef"] for item in sync["env"] if "valueFrom" in item}
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(credentials)
        assert len({reference["name"] for reference in credentials.values()}) == 1
        assert not any(credentials[name].get("optional") for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))
    assert int(flags(sidecar["args"])["--poll_seconds"]) >= 30, "each poll LISTs the bucket, per replica"
    assert not any(item["name"].startswith("AWS_") for item in serving.get("env", [])), "TF Serving needs no S3 keys"


@needs_kubectl
def test_s3_overlay_sync_commands_fill_the_directory_tf_serving_watches(s3_server, tmp_path):
    """The init container's and the sidecar's own command lines, run against S3 on loopback.

    The emptyDir becomes a temporary directory and the Secret the test store's
    AWS_* variables; everything else is taken from the rendered overlay.
    """
    import fsspec

    spec = pod_spec("overlays/s3")
    (model,) = served_models_config("overlays/s3").model_config_list.config
    empty_dir = tmp_path / "emptyDir"

    def command_line(sync: dict) -> list[str]:
        environment = container_environment("overlays/s3", sync)
        (mount,) = [item for item in sync["volumeMounts"] if model.base_path.startswith(item["mountPath"] + "/")]
        args = [expand(arg, environment) for arg in sync["args"]]
        args = [str(empty_dir) + arg[len(mount["mountPath"]) :] if arg == model.base_path else arg for arg in args]
        return [sys.executable if part == "python" else part for part in sync["command"]] + args

    once = command_line(container(spec, "model-sync-once", init=True))
    source = once[3]
    s3_server.create_bucket(source.split("/")[2])
    store, _ = fsspec.core.url_to_fs(source)
    for version, complete in ((1, True), (2, True), (3, False)):  # 3: an upload still under way
        store.pipe(f"{source}/{version}/variables/variables.index", b"index %d" % version)
        if complete:
            store.pipe(f"{source}/{version}/saved_model.pb", b"graph %d" % version)
    watched = empty_dir / model.base_path[len("/models/") :]

    result = subprocess.run(once, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in watched.iterdir()) == ["1", "2"]
    assert (watched / "2/saved_model.pb").read_bytes() == b"graph 2"

    store.pipe(f"{source}/3/saved_model.pb", b"graph 3")  # the upload completes
    store.rm(f"{source}/1", recursive=True)  # and version 1 is retired at the source
    sidecar = subprocess.Popen(
        command_line(container(spec, "model-sync")), cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60  # the first poll starts at once; the next is --poll_seconds later
        while sorted(path.name for path in watched.iterdir()) != ["2", "3"] and time.monotonic() < deadline:
            assert sidecar.poll() is None, sidecar.stderr.read()
            time.sleep(0.2)
        assert sorted(path.name for path in watched.iterdir()) == ["2", "3"]
    finally:
        sidecar.send_signal(signal.SIGTERM)  # what the kubelet sends when the pod stops
        assert sidecar.wait(timeout=60) == 0, sidecar.stderr.read()


# --- capacity --------------------------------------------------------------------------------------------------


@needs_kubectl
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_rollouts_and_drains_keep_capacity_and_the_service_finds_the_pods(kustomization):
    objects = rendered(kustomization)
    deployment, service, budget = (only(objects, kind) for kind in ("Deployment", "Service", "PodDisruptionBudget"))
    replicas = deployment["spec"]["replicas"]
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert replicas >= 3 and deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert rolling["maxUnavailable"] == 0 and rolling["maxSurge"] >= 1

    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    for selector in (
        deployment["spec"]["selector"]["matchLabels"],
        budget["spec"]["selector"]["matchLabels"],
        service["spec"]["selector"],
    ):
        assert selector and selector.items() <= pod_labels.items(), selector
    assert budget["spec"]["maxUnavailable"] == 1 and "minAvailable" not in budget["spec"]

    serving = container(deployment["spec"]["template"]["spec"], "tensorflow-serving")
    container_ports = {port["name"] for port in serving["ports"]}
    assert service["spec"]["type"] == "ClusterIP"
    assert {(port["name"], port["port"], port["targetPort"]) for port in service["spec"]["ports"]} == {
        ("grpc", 8500, "grpc"),
        ("http", 8501, "http"),
    }
    assert {"grpc", "http"} <= container_ports


# --- KServe ----------------------------------------------------------------------------------------------------


def test_kserve_inference_service_uses_the_pinned_runtime_and_our_model_name():
    service = yaml.safe_load((REPO_ROOT / "deploy/kserve/inferenceservice.yaml").read_text())
    assert (service["apiVersion"], service["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    model = dict(service["spec"]["predictor"]["model"])
    assert model.pop("modelFormat") == {"name": "tensorflow"}
    assert model.pop("runtime") == "kserve-tensorflow-serving"
    assert model.pop("runtimeVersion") == TF_VERSION  # the tensorflow/serving image tag
    assert re.fullmatch(rf"(gs|s3)://[a-z0-9][a-z0-9._-]+/(.+/)?{MODEL_NAME}", model.pop("storageUri"))
    assert flags(model["args"])["--model_name"] == MODEL_NAME
    assert model["readinessProbe"]["httpGet"]["path"] == f"/v1/models/{MODEL_NAME}/metadata"
    # The rest is a Container spec, which KServe merges into its runtime's container: check it as one.
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "check"},
        "spec": {"containers": [{"name": "kserve-container", **model}]},
    }
    for version in KUBERNETES_VERSIONS:
        validate(pod, version)


# --- docker compose --------------------------------------------------------------------------------------------


def compose_services(name: str) -> dict:
    return yaml.safe_load((REPO_ROOT / "serving" / name).read_text())["services"]


@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.s3.yml"])
def test_compose_pins_tf_serving_to_the_pinned_tensorflow(name):
    serving = compose_services(name)["tensorflow-serving"]
    assert serving["image"] == "tensorflow/serving:${TF_SERVING_TAG:-%s}" % TF_VERSION
    assert flags(serving["command"])["--model_config_file"] == "/config/models.config"


def test_compose_s3_mirrors_into_the_volume_tf_serving_watches():
    services = compose_services("docker-compose.s3.yml")
    (model,) = parse_models_config(MODELS_CONFIG.read_text()).model_config_list.config
    serving = services["tensorflow-serving"]
    watched = {volume["target"]: volume for volume in serving["volumes"]}
    assert watched["/models"]["type"] == "volume" and watched["/models"]["read_only"]
    assert serving["depends_on"]["model-sync-once"]["condition"] == "service_completed_successfully"
    for name, mode in (("model-sync-once", "--once"), ("model-sync", "--poll_seconds")):
        sync = services[name]
        assert sync["entrypoint"] == ["python", "-m", "serving.sync"]
        assert sync["build"]["dockerfile"] == "deploy/sync/Dockerfile"
        source, destination, *options = sync["command"]
        assert source.startswith("${MODEL_SOURCE:?") and destination == model.base_path
        assert f"{watched['/models']['source']}:/models" in sync["volumes"]
        assert any(option.split("=")[0] == mode for option in options)
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"} <= set(sync["environment"])
    poll = flags(services["model-sync"]["command"][2:])["--poll_seconds"]
    assert int(re.fullmatch(r"\$\{SYNC_POLL_SECONDS:-(\d+)\}", poll).group(1)) >= 30


# --- the sync image --------------------------------------------------------------------------------------------

DOCKERFILE = REPO_ROOT / "deploy/sync/Dockerfile"


def dockerfile_installs() -> list[str]:
    (install,) = re.findall(r"^RUN pip install -c constraints\.txt (.+)$", DOCKERFILE.read_text(), re.MULTILINE)
    return install.split()


def third_party_imports(module: Path, package_root: Path, seen=None) -> set[str]:
    """Top-level names a module imports outside the standard library, following imports of its own package."""
    seen = set() if seen is None else seen
    if module in seen:
        return set()
    seen.add(module)
    found = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: inside the package
                base = ".".join([package_root.name, *module.relative_to(package_root).parent.parts, base]).strip(".")
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top == package_root.name:
                target = package_root.parent.joinpath(*name.split("."))
                for candidate in (target.with_suffix(".py"), target / "__init__.py"):
                    if candidate.is_file():
                        found |= third_party_imports(candidate, package_root, seen)
            elif top not in sys.stdlib_module_names:
                found.add(top)
    return found


def test_sync_image_installs_pinned_packages_that_cover_what_serving_sync_imports():
    text = DOCKERFILE.read_text()
    assert re.search(r'^ENTRYPOINT \["python", "-m", "serving\.sync"\]$', text, re.MULTILINE)
    assert re.search(r'^RUN python -c "import serving\.sync"$', text, re.MULTILINE)  # the build fails otherwise
    assert re.search(r"^USER \d+", text, re.MULTILINE), "the sidecar runs as non-root"
    installs = dockerfile_installs()
    for name in installs:
        pinned_version(name)

    sync_module = REPO_ROOT / "serving/sync.py"
    assert sync_module.is_file(), "serving/sync.py is missing: the S3 overlay and the sync image run it"
    distributions = requirement_closure(installs)
    provided = {
        module
        for module, owners in importlib.metadata.packages_distributions().items()
        if any(owner.lower().replace("_", "-") in distributions for owner in owners)
    }
    missing = third_party_imports(sync_module, REPO_ROOT / "serving") - provided
    assert not missing, f"serving.sync imports {sorted(missing)}: not in the image's `pip install {' '.join(installs)}`"
