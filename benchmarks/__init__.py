"""refluxo's benchmarks: ``python -m benchmarks.run`` (or ``make bench``); see ``run.py``."""
