"""A throwaway git + DVC copy of this repository for the benchmarks that run `dvc`."""

import shutil
import subprocess
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
IDENTITY = ["-c", "user.name=benchmark", "-c", "user.email=benchmark@example.com"]


def copy_repository(destination: Path, data: dict) -> None:
    """The repository's files as git sees them (tracked and untracked, not ignored), with the params'
    `data` section updated by `data` (e.g. a synthetic source or another URL), committed afresh."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        if (REPO_ROOT / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, destination / name)
    params_file = destination / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["data"].update(data)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    for command in (["init", "-q"], [*IDENTITY, "add", "-A"], [*IDENTITY, "commit", "-q", "-m", "benchmark"]):
        subprocess.run(["git", *command], cwd=destination, check=True)
