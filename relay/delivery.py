"""Where RQ finds the jobs stored before the relay's modules became packages (``relay.delivery.deliver``).

RQ stores a job's function as a dotted path. Runs queued, scheduled or dead-lettered by an older relay
name this module; they still run and replay. New jobs name ``relay.worker.job``.
"""

from relay.worker.job import deliver, on_failure, unmappable

__all__ = ["deliver", "on_failure", "unmappable"]
