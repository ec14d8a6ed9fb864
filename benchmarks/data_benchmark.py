"""Wall time and peak memory of the prepare and window stages on full-size data.

Generates the default synthetic range (2009-2017, about 420,000 readings) into a
temporary directory, then times each stage's work as its main() does it (read,
compute, write). Memory is the peak of Python-level allocations while the
window stage runs again under tracemalloc (which slows what it traces, so
times come from untraced runs), compared with the hourly table's own size.

Targets on a 2-core machine: prepare under 10 s, window under 5 s, window
peak memory under twice the hourly table.

    python benchmarks/data_benchmark.py
"""

import tempfile
import time
import tracemalloc
from pathlib import Path

import pandas as pd

from pipeline import synthetic
from pipeline.config import load_params
from pipeline.dataset import save_windows
from pipeline.prepare import prepare, read_raw_csv
from pipeline.window import make_windows


def timed(work):
    """Run `work()`; return its result and wall seconds."""
    started = time.perf_counter()
    result = work()
    return result, time.perf_counter() - started


def peak_memory(work) -> int:
    """Peak bytes allocated while `work()` runs."""
    tracemalloc.start()
    work()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def main() -> None:
    params = load_params()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        raw_csv, hourly_parquet = scratch / "raw.csv", scratch / "hourly.parquet"
        readings = synthetic.generate_readings("2009-01-01", "2017-01-01", seed=params["seed"])
        synthetic.write_jena_csv(readings, raw_csv)
        print(f"raw CSV: {len(readings):,} readings, {raw_csv.stat().st_size / 1e6:.1f} MB")

        def run_prepare():
            hourly, _ = prepare(read_raw_csv(raw_csv), params["prepare"]["max_fill_hours"])
            hourly.reset_index().to_parquet(hourly_parquet, index=False)

        def run_window():
            table = pd.read_parquet(hourly_parquet)
            save_windows(make_windows(table, params["window"]), scratch / "windows")
            return table

        _, prepare_seconds = timed(run_prepare)
        table, window_seconds = timed(run_window)
        window_peak = peak_memory(run_window)
        table_bytes = table.memory_usage(deep=True).sum()

    print(f"prepare: {prepare_seconds:6.2f} s  (target < 10 s)")
    print(f"window:  {window_seconds:6.2f} s  (target <  5 s)   peak {window_peak / 1e6:.1f} MB")
    print(
        f"hourly table: {len(table):,} rows, {table_bytes / 1e6:.1f} MB; "
        f"window peak / table = {window_peak / table_bytes:.2f} (target < 2)"
    )


if __name__ == "__main__":
    main()
