"""The GitHub workflows call our commands with flags those commands have.

A workflow runs only on GitHub, so a renamed flag would first show there, in
a failed scheduled run. Every call of a console script or of
`python -m pipeline|forecast|serving.<module>` in a workflow's `run` steps is
checked against that command's own `--help`.
"""

import re
import subprocess
import sys
import tomllib

import pytest
import yaml
from conftest import REPO_ROOT

WORKFLOWS = sorted((REPO_ROOT / ".github/workflows").glob("*.yml"))
SCRIPTS = {
    name: target.split(":")[0]
    for name, target in tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"].items()
}
MODULE_CALL = re.compile(r"python3? -m ((?:pipeline|forecast|serving)\.[\w.]+)")


def commands(workflow) -> list[tuple[str, list[str]]]:
    """(module, flags) of every call of one of our commands in the workflow's run steps."""
    caller = re.compile(
        MODULE_CALL.pattern + "|" + "|".join(rf"(?<![\w-])({re.escape(name)})(?![\w-])" for name in SCRIPTS)
    )
    found = []
    for job in yaml.safe_load(workflow.read_text())["jobs"].values():
        for step in job["steps"]:
            for line in step.get("run", "").replace("\\\n", " ").splitlines():
                for match in caller.finditer(line):
                    module = match.group(1) or SCRIPTS[next(group for group in match.groups()[1:] if group)]
                    arguments = re.split(r"&&|\|\||[;|)]", line[match.end() :])[0]
                    found.append((module, re.findall(r"(?<![\w-])--[\w-]+", arguments)))
    return found


def test_the_workflows_call_our_commands():
    called = {module for workflow in WORKFLOWS for module, _ in commands(workflow)}
    assert {"pipeline.archives", "forecast.verify"} <= called


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda path: path.name)
def test_every_flag_a_workflow_passes_is_one_the_command_has(workflow):
    for module, flags in commands(workflow):
        result = subprocess.run(
            [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT
        )
        assert result.returncode == 0, f"{module} --help: {result.stderr}"
        unknown = [flag for flag in flags if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", result.stdout)]
        assert not unknown, f"{workflow.name}: {module} has no {unknown}"


def test_the_retraining_runs_only_on_verify_s_alarm_exit_code():
    """forecast.verify exits 3 on an alarm; the workflow retrains on exactly that and fails on anything else."""
    steps = yaml.safe_load((REPO_ROOT / ".github/workflows/verify-and-retrain.yml").read_text())["jobs"]
    steps = steps["verify-and-retrain"]["steps"]
    verify = next(step for step in steps if step.get("id") == "verify")
    assert '"$code" = 3' in verify["run"] and '[ "$code" = 0 ] || [ "$code" = 3 ]' in verify["run"]
    retrain = next(step for step in steps if "dvc exp run -S" in step.get("run", ""))
    assert retrain["if"] == "steps.verify.outputs.alarm == 'true'"
    help_text = subprocess.run(
        [sys.executable, "-m", "forecast.verify", "--help"], capture_output=True, text=True, timeout=120
    ).stdout
    assert re.search(r"Exit status: 0, no alarm; 3, an alarm", " ".join(help_text.split()))
