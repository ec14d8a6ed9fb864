"""The deployment manifests as the tests read them: rendered, validated, and looked into.

`rendered(kustomization)` is what `kubectl kustomize` makes of deploy/k8s/<kustomization>
(once per process; tests that need it are marked `needs_kubectl`), `validate` checks a
document against the Kubernetes OpenAPI schema of a version (kubernetes-validate, strict),
and the small readers below pick objects, containers, flags and environments out of them.
`pinned_version` and `requirement_closure` answer what constraints.txt and pip install.
"""

import importlib.metadata
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from google.protobuf import text_format
from packaging.requirements import Requirement
from tensorflow_serving.config import model_server_config_pb2

from tests.helpers.repository import REPO_ROOT

K8S_DIR = REPO_ROOT / "deploy/k8s"
KUSTOMIZATIONS = ["base", "overlays/gcs", "overlays/s3"]
# The oldest Kubernetes minor the manifests are written for, and the newest the validator knows.
KUBERNETES_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
MODELS_CONFIG = REPO_ROOT / "serving/models.config"
MODEL_NAME = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())["serving"]["model_name"]
KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(
    KUBECTL is None,
    reason="kubectl is not installed: cannot render the "
    "kustomizations (test_manifest_files_pass_the_schema still checks the files)",
)


def pinned_version(package: str) -> str:
    """`package==X` from constraints.txt."""
    match = re.search(rf"^{re.escape(package)}==(\S+)$", (REPO_ROOT / "constraints.txt").read_text(), re.MULTILINE)
    assert match, f"{package} is not pinned in constraints.txt"
    return match.group(1)


TF_VERSION = pinned_version("tensorflow")
TF_SERVING_IMAGE = f"tensorflow/serving:{TF_VERSION}"


def render(kustomization: str) -> list[dict]:
    result = subprocess.run(
        [KUBECTL, "kustomize", str(K8S_DIR / kustomization)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"kubectl kustomize {kustomization} failed:\n{result.stderr}"
    return [document for document in yaml.safe_load_all(result.stdout) if document]


_rendered = {}


def rendered(kustomization: str) -> list[dict]:
    if kustomization not in _rendered:
        _rendered[kustomization] = render(kustomization)
    return _rendered[kustomization]


def only(objects: list[dict], kind: str) -> dict:
    (found,) = [item for item in objects if item["kind"] == kind]
    return found


def pod_spec(kustomization: str) -> dict:
    return only(rendered(kustomization), "Deployment")["spec"]["template"]["spec"]


def container(spec: dict, name: str, init: bool = False) -> dict:
    (found,) = [item for item in spec["initContainers" if init else "containers"] if item["name"] == name]
    return found


def flags(args: list[str]) -> dict[str, str]:
    return dict(arg.split("=", 1) for arg in args if arg.startswith("--") and "=" in arg)


def parse_models_config(text: str):
    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


def served_models_config(kustomization: str):
    """The models.config the TF Serving container reads, from the ConfigMap mounted where --model_config_file says."""
    spec = pod_spec(kustomization)
    serving = container(spec, "tensorflow-serving")
    config_path = Path(flags(serving["args"])["--model_config_file"])
    (mount,) = [item for item in serving["volumeMounts"] if item["mountPath"] == str(config_path.parent)]
    assert "subPath" not in mount, "a subPath mount never sees ConfigMap updates"
    (volume,) = [item for item in spec["volumes"] if item["name"] == mount["name"]]
    config_maps = {item["metadata"]["name"]: item for item in rendered(kustomization) if item["kind"] == "ConfigMap"}
    return parse_models_config(config_maps[volume["configMap"]["name"]]["data"][config_path.name])


def container_environment(kustomization: str, spec: dict) -> dict[str, str]:
    """A container's plain variables: `env` values and the ConfigMaps of `envFrom`."""
    config_maps = {item["metadata"]["name"]: item for item in rendered(kustomization) if item["kind"] == "ConfigMap"}
    environment = {}
    for source in spec.get("envFrom", []):
        environment.update(config_maps[source["configMapRef"]["name"]]["data"])
    environment.update({item["name"]: item["value"] for item in spec.get("env", []) if "value" in item})
    return environment


def expand(arg: str, environment: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command and args."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda match: environment[match.group(1)], arg)


def validate(document: dict, version: str) -> None:
    try:
        kubernetes_validate.validate(document, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        name = f"{document.get('kind')}/{document.get('metadata', {}).get('name')}"
        raise AssertionError(
            f"{name} is invalid for Kubernetes {version}: {error.message} at {'.'.join(map(str, error.path))}"
        ) from None


def requirement_closure(names: list[str]) -> set[str]:
    """The distributions pip installs for `names` (at the pins this environment holds)."""
    seen, pending = set(), list(names)
    while pending:
        name = pending.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        for line in importlib.metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return seen
