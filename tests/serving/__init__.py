"""The ModelServer's tests.

pytest imports this folder as a package named ``serving`` (``tests/`` has no
``__init__.py``), which hides the server's own ``serving`` package. The
server's modules are found on this package's path too, so that tests that
import them (``serving.manager``, ``serving.client``) get this checkout's code,
never an installed copy.
"""

from pathlib import Path

__path__.append(str(Path(__file__).resolve().parents[2] / "serving"))
