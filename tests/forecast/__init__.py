"""The application's tests: the forecast client's commands and the forecast archive.

pytest imports this folder as a package named ``forecast`` (``tests/`` has no
``__init__.py``), which hides the application's own ``forecast`` package. Its
modules are found on this package's path too, so that tests importing them
(``forecast.archive``, ``forecast.issue``) get this checkout's code.
"""

from pathlib import Path

__path__.append(str(Path(__file__).resolve().parents[2] / "forecast"))
