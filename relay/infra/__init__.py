"""What every step runs on: Redis connections, log lines, metrics, process supervision, in-process servers.

Depends on nothing of the data path: every step may use it.
"""
