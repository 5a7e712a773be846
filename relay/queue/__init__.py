"""Step 3, the queue: planned runs stored durably in Redis as RQ jobs, with their event and run records.

In: an event and its planned runs. Out: one RQ job per run and the records every later step updates, in one
transaction. Also what a run carries with it (its retry policy) and the queue state metrics read.
"""
