"""phlo-relay's benchmarks: ``.venv/bin/python bench/run.py`` starts what it measures and writes the table.

A package so that the baseline servers and the no-op RQ job can be imported by the processes it starts.
"""
