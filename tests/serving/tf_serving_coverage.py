"""Which of TF Serving's REST and JSON test cases our tests do not cover, for a given tensorflow/serving checkout.

    python -m tests.serving.tf_serving_coverage /path/to/tensorflow/serving [--ref 2.21.0]

Reads ``json_tensor_test.cc`` and ``http_rest_api_handler_test.cc`` (from the work tree, or from a git
ref of the checkout with ``--ref``), lists their ``TEST``/``TEST_F``/``TYPED_TEST`` cases as
``Suite.Name``, and prints those that no file under ``tests/serving`` names. A case counts as covered
when our tests cite ``Suite.Name`` (a test's docstring, or a comment saying why it cannot apply).
Exit code 0 when every case is covered, 1 when some are not, 2 for a checkout without the files.
"""

import argparse
import re
import subprocess
import sys
from pathlib import Path

TEST_FILES = ("tensorflow_serving/util/json_tensor_test.cc",
              "tensorflow_serving/model_servers/http_rest_api_handler_test.cc")
_CASE = re.compile(r"^\s*(?:TYPED_)?TEST(?:_F)?\(\s*(\w+)\s*,\s*(\w+)\s*\)", re.MULTILINE)
OUR_TESTS = Path(__file__).resolve().parent


def cases_in(source: str) -> list[str]:
    """C++ test source -> its cases as ``Suite.Name``, in file order."""
    return [f"{suite}.{name}" for suite, name in _CASE.findall(source)]


def cited_in(texts: list[str], cases: list[str]) -> set[str]:
    """The cases that some text names as ``Suite.Name`` (not as a prefix of a longer name)."""
    return {case for case in cases
            if any(re.search(re.escape(case) + r"(?!\w)", text) for text in texts)}


def read_test_file(checkout: Path, path: str, ref: str | None) -> str:
    if ref is None:
        return (checkout / path).read_text()
    return subprocess.run(["git", "-C", str(checkout), "show", f"{ref}:{path}"], check=True,
                          capture_output=True, text=True).stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkout", type=Path, help="a tensorflow/serving checkout (work tree or git directory)")
    parser.add_argument("--ref", help="read the test files at this git ref (tag, branch, commit)")
    args = parser.parse_args(argv)
    ours = [path.read_text() for path in sorted(OUR_TESTS.glob("*.py"))]
    missing_total = 0
    for path in TEST_FILES:
        try:
            cases = cases_in(read_test_file(args.checkout, path, args.ref))
        except (OSError, subprocess.CalledProcessError) as error:
            print(f"{path}: cannot read it from {args.checkout}: {error}", file=sys.stderr)
            return 2
        missing = [case for case in cases if case not in cited_in(ours, cases)]
        missing_total += len(missing)
        print(f"{path}: {len(cases)} cases, {len(cases) - len(missing)} cited by our tests, {len(missing)} not")
        for case in missing:
            print(f"  not covered: {case}")
    return 1 if missing_total else 0


if __name__ == "__main__":
    sys.exit(main())
