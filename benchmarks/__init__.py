"""Benchmarks, run by hand: ``python -m benchmarks.bench_store`` (see benchmarks/README.md)."""
