"""Step 6, the outcome's afterlife: dead letters listed, shown, purged and replayed.

In: RQ's failed registry and the run records. Out: runs queued again (mapped anew with the current config)
or purged, each step appended to the run's history.
"""
