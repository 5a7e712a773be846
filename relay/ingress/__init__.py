"""Step 1, the ingress: an HTTP request in, verified and answered only once its runs are stored.

In: a webhook on ``/hooks/{source}`` (and the admin API, health probes, metrics). Out: ``202`` with the
event and its jobs, after ``relay.queue`` stored them; or an error whose JSON body says what is wrong.
"""
