"""What the tests (and benchmarks) share; see each module's docstring."""
