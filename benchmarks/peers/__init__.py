"""Real peer systems started by the benchmarks: standalone instances in temp dirs."""
