"""deploy/k8s/forecast-issue and deploy/forecast/Dockerfile: the hourly `wetterfrosch-issue` on Kubernetes.

As tests/test_deploy.py does for the replicas: `kubectl kustomize` renders the
kustomization, every object passes the Kubernetes schema of the oldest and
newest Kubernetes we support, and then its content: the schedule and retries,
the command line (parsed by forecast.issue's own parser) against the base's
Service and params.yaml, and an image that installs what the command imports.
Offline: nothing is applied to a cluster.
"""

import importlib.metadata
import re
import subprocess
import sys
import tomllib

import pytest
import yaml

from forecast import issue
from serving.store import is_remote
from tests.helpers.manifests import (
    K8S_DIR,
    KUBERNETES_VERSIONS,
    container_environment,
    expand,
    needs_kubectl,
    only,
    pinned_version,
    rendered,
    requirement_closure,
    validate,
)
from tests.helpers.repository import REPO_ROOT

KUSTOMIZATION = "forecast-issue"
PARAMS = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
DOCKERFILE = REPO_ROOT / "deploy/forecast/Dockerfile"


def job_spec() -> dict:
    return only(rendered(KUSTOMIZATION), "CronJob")["spec"]["jobTemplate"]["spec"]


def issue_container() -> dict:
    (container,) = job_spec()["template"]["spec"]["containers"]
    return container


@needs_kubectl
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_rendered_object_passes_the_kubernetes_schema(version):
    objects = rendered(KUSTOMIZATION)
    assert sorted(item["kind"] for item in objects) == ["ConfigMap", "CronJob"]
    for document in objects:
        validate(document, version)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_manifest_file_passes_the_schema(version):
    """Without kubectl too."""
    (document,) = yaml.safe_load_all((K8S_DIR / KUSTOMIZATION / "cronjob.yaml").read_text())
    validate(document, version)


@needs_kubectl
def test_issues_hourly_never_overlapping_and_retrying_only_within_the_hour():
    cronjob = only(rendered(KUSTOMIZATION), "CronJob")["spec"]
    minute, *every = cronjob["schedule"].split()
    assert every == ["*", "*", "*", "*"] and 0 <= int(minute) < 60, cronjob["schedule"]
    assert cronjob["timeZone"] == "Etc/UTC" and cronjob["concurrencyPolicy"] == "Forbid"
    assert cronjob["startingDeadlineSeconds"] < 3600
    job = job_spec()
    assert job["activeDeadlineSeconds"] < 3600 and job["backoffLimit"] >= 1
    # Bad input (exit 2) will not get better by retrying; an unreachable server (exit 1) may.
    (rule,) = job["podFailurePolicy"]["rules"]
    assert rule == {
        "action": "FailJob",
        "onExitCodes": {"containerName": issue_container()["name"], "operator": "In", "values": [2]},
    }
    assert job["template"]["spec"]["restartPolicy"] == "Never"


@needs_kubectl
def test_its_pods_are_never_selected_by_the_serving_service():
    pod_labels = job_spec()["template"]["metadata"]["labels"]
    service = only(rendered("base"), "Service")
    assert not service["spec"]["selector"].items() <= pod_labels.items()


@needs_kubectl
def test_the_command_line_asks_the_base_service_and_agrees_with_params():
    container = issue_container()
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert container["command"] == ["wetterfrosch-issue"] and scripts["wetterfrosch-issue"] == "forecast.issue:main"
    environment = container_environment(KUSTOMIZATION, container)
    args = issue.parse_args([expand(arg, environment) for arg in container["args"]])

    service = only(rendered("base"), "Service")
    grpc_port = {port["name"]: port["port"] for port in service["spec"]["ports"]}["grpc"]
    assert args.target == f"{service['metadata']['name']}:{grpc_port}" and not args.rest
    assert args.model_name == PARAMS["serving"]["model_name"]
    assert args.max_fill_hours == PARAMS["prepare"]["max_fill_hours"]
    assert re.fullmatch(r"(s3|gs)://[a-z0-9][a-z0-9._-]+/.+", args.archive), args.archive
    assert args.attempts >= 2 and args.timeout * args.attempts * 2 < job_spec()["activeDeadlineSeconds"]

    # The readings come from a read-only volume mount; the archive's S3 keys from the overlay's Secret.
    spec = job_spec()["template"]["spec"]
    (mount,) = [item for item in container["volumeMounts"] if args.csv.startswith(item["mountPath"] + "/")]
    (volume,) = [item for item in spec["volumes"] if item["name"] == mount["name"]]
    assert mount["readOnly"] and volume["persistentVolumeClaim"]["readOnly"]
    credentials = {item["name"]: item["valueFrom"]["secretKeyRef"] for item in container["env"]}
    assert {reference["name"] for reference in credentials.values()} == {"wetterfrosch-s3-credentials"}
    assert not credentials["AWS_ACCESS_KEY_ID"].get("optional") and is_remote(args.archive)
    repository, _, tag = container["image"].rpartition(":")
    assert (
        repository.endswith("/wetterfrosch-forecast")
        and tag == tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    )


def test_the_image_installs_pinned_packages_that_cover_what_the_commands_import():
    text = DOCKERFILE.read_text()
    (install,) = re.findall(r"^RUN pip install -c constraints\.txt (.+)$", text, re.MULTILINE)
    installs = install.split()
    for name in installs:
        pinned_version(name)
    assert re.search(r"^RUN pip install --no-deps \. ", text, re.MULTILINE), "the console scripts"
    assert re.search(r'^RUN python -c "import forecast\.issue, forecast\.client"', text, re.MULTILINE)
    assert re.search(r"^USER \d+", text, re.MULTILINE)

    # The commands imported in a fresh interpreter that cannot see any package the image would not have.
    provided = requirement_closure(installs)
    absent = sorted(
        module
        for module, owners in importlib.metadata.packages_distributions().items()
        if not {owner.lower().replace("_", "-") for owner in owners} & provided
        and module not in sys.stdlib_module_names
        and module not in ("pipeline", "forecast", "serving")
    )
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_AS_IN_THE_IMAGE, *absent],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"the image's `pip install {install}` misses a module:\n{result.stderr[-2000:]}"


# Imports forecast.issue and forecast.client with the top-level modules named in argv hidden, as in an image
# without them: a required one fails the import; an optional one (keras' pydot, grpc's grpc_tools) is skipped.
IMPORT_AS_IN_THE_IMAGE = """
import sys
absent = set(sys.argv[1:])

class NotInTheImage:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in absent:
            raise ModuleNotFoundError(f"No module named {name!r} (not installed in the image)", name=name)

sys.meta_path.insert(0, NotInTheImage())
import forecast.issue, forecast.client
"""
