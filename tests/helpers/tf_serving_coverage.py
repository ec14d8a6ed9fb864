"""Which of TF Serving's test cases our tests do not cover, for a given tensorflow/serving checkout.

    python -m tests.helpers.tf_serving_coverage /path/to/tensorflow/serving [--ref 2.21.0]

Reads ``json_tensor_test.cc``, ``http_rest_api_handler_test.cc`` and ``tensorflow_model_server_test.py``
(from the work tree, or from a git ref of the checkout with ``--ref``) and lists their cases: C++
``TEST``/``TEST_F``/``TYPED_TEST`` cases as ``Suite.Name``, the Python file's ``def test...`` methods as
``tensorflow_model_server_test.py::name``. A case counts as covered when a file in ``tests/serving``
(other than this script's test) cites that name (a test's docstring, or a comment saying why it
cannot apply), or when ``serving/README.md`` does (its table of cases that cannot apply); every other
case is printed.
Exit code 0 when every case is covered, 1 when some are not, 2 for a checkout without the files.
"""

import argparse
import re
import subprocess
import sys
from pathlib import Path

PYTHON_TEST_FILE = "tensorflow_serving/model_servers/tensorflow_model_server_test.py"
TEST_FILES = (
    "tensorflow_serving/util/json_tensor_test.cc",
    "tensorflow_serving/model_servers/http_rest_api_handler_test.cc",
    PYTHON_TEST_FILE,
)
_CASE = re.compile(r"^\s*(?:TYPED_)?TEST(?:_F)?\(\s*(\w+)\s*,\s*(\w+)\s*\)", re.MULTILINE)
_PYTHON_CASE = re.compile(r"^\s+def (test\w*)\s*\(\s*self\b", re.MULTILINE)
REPO_ROOT = Path(__file__).resolve().parents[2]
OUR_TESTS = REPO_ROOT / "tests" / "serving"
NOT_CITATIONS = {"test_tf_serving_coverage.py"}  # this script's test names cases as examples
SERVING_README = REPO_ROOT / "serving" / "README.md"


def cases_in(source: str) -> list[str]:
    """C++ test source -> its cases as ``Suite.Name``, in file order."""
    return [f"{suite}.{name}" for suite, name in _CASE.findall(source)]


def python_cases_in(source: str, file_name: str) -> list[str]:
    """Python test source -> its test methods as ``<file_name>::name``, in file order."""
    return [f"{file_name}::{name}" for name in _PYTHON_CASE.findall(source)]


def cases_of(path: str, source: str) -> list[str]:
    """A test file of TF Serving (path in the checkout, text) -> its cases, named as our tests cite them."""
    if path.endswith(".py"):
        return python_cases_in(source, Path(path).name)
    return cases_in(source)


def cited_in(texts: list[str], cases: list[str]) -> set[str]:
    """The cases that some text names in full (not as a prefix of a longer name)."""
    return {case for case in cases if any(re.search(re.escape(case) + r"(?!\w)", text) for text in texts)}


def read_test_file(checkout: Path, path: str, ref: str | None) -> str:
    if ref is None:
        return (checkout / path).read_text()
    return subprocess.run(
        ["git", "-C", str(checkout), "show", f"{ref}:{path}"], check=True, capture_output=True, text=True
    ).stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkout", type=Path, help="a tensorflow/serving checkout (work tree or git directory)")
    parser.add_argument("--ref", help="read the test files at this git ref (tag, branch, commit)")
    args = parser.parse_args(argv)
    ours = [path.read_text() for path in sorted(OUR_TESTS.glob("*.py")) if path.name not in NOT_CITATIONS]
    readme = [SERVING_README.read_text()] if SERVING_README.exists() else []
    missing_total = 0
    for path in TEST_FILES:
        try:
            cases = cases_of(path, read_test_file(args.checkout, path, args.ref))
        except (OSError, subprocess.CalledProcessError) as error:
            print(f"{path}: cannot read it from {args.checkout}: {error}", file=sys.stderr)
            return 2
        tested = cited_in(ours, cases)
        not_applicable = cited_in(readme, cases) - tested
        missing = [case for case in cases if case not in tested | not_applicable]
        missing_total += len(missing)
        print(
            f"{path}: {len(cases)} cases, {len(tested)} cited by our tests, "
            f"{len(not_applicable)} only in serving/README.md, {len(missing)} not covered"
        )
        for case in missing:
            print(f"  not covered: {case}")
    return 1 if missing_total else 0


if __name__ == "__main__":
    sys.exit(main())
