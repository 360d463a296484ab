"""The churn meter: callback breaks and directory refetches per delivered message.

See README.md in this directory; run with ``python -m benchmarks.churn``.
"""
