"""A command line run in the test process, as cheap to call as a function.

`run_main(main, capsys, *argv)` calls `main([str(arg) ...])` and returns (exit code,
stdout, stderr): main's return value, or the code of the SystemExit argparse raises.
An exception escaping main fails the test, as a traceback would show in a process.
"""


def run_main(main, capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main([str(arg) for arg in argv])
    except SystemExit as exited:
        code = exited.code
    out, err = capsys.readouterr()
    return code, out, err
