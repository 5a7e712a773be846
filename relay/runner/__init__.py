"""Step 5, the runner: the PHLO runner as the worker speaks to it, and what it must respect.

In: an account's credentials, a PHLO id and a payload. Out: the runner's answer, or an error that says
whether retrying can help. Also the account's rate limit and circuit breaker (shared through Redis) and the
sandbox, a local server with the runner's contract.
"""
