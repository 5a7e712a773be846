"""Step 4, the worker: RQ worker processes that take each run, deliver it and record what happened.

In: a run's job from the RQ queue. Out: the run's outcome in its record; a retry scheduled through RQ; or a
dead letter in RQ's failed registry.
"""
