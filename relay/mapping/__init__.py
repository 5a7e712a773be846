"""Step 2, the mapping: a request body to events, and each event to the PHLO runs the config asks for.

In: the raw body and headers of a verified request, and the mapping config. Out: event documents, each with
its id, type and duplicate key, and per matching route a planned run (PHLO id, account, payload) or the
reason it cannot be mapped. Pure code: no I/O, no Redis, no clock but what the caller passes.
"""
