"""phlo-relay: CRM and form webhooks in, Plivo PHLO runs out.

The data path, one module a step, in the order a webhook travels:

1. ``ingress``   aiohttp app: ``POST /hooks/{source}``, ``GET /events/{event_id}``
2. ``verify``    the sender's signature (or token, Basic auth, IP allow-list) on the raw bytes, with
                 ``checks`` (one module per family of schemes); ``sources`` holds what a source can
                 configure, ``origin`` the public URL and client address
3. ``parse``     request body (JSON, form, multipart, XML) to one event document
4. ``events``    a document to its events (batches split), each with its id and duplicate key
5. ``config``    the mapping config: sources and routes, validated with pydantic
6. ``mapping``   event document to PHLO runs (JMESPath conditions and payloads)
7. ``enqueue``   runs stored as RQ jobs with the event's record and duplicate claim, in one transaction
8. ``delivery``  the RQ job that delivers one run: breaker (``breaker``), rate limit (``ratelimit``),
                 then the runner; ``worker`` runs the worker processes
9. ``runner``    the client of Plivo's PHLO runner
10. ``outcome``  event and run records with each run's history: queued, waiting, running, succeeded,
                 failed, dead-lettered
11. ``retry``    when a failed run is tried again: backoff with full jitter, Retry-After, attempts and age
12. ``deadletters`` / ``replay``  list, show, purge and replay dead letters (``relay dlq``, ``admin`` API)

Around it: ``settings``, ``errors``, ``keys``; the ``sandbox`` runner, ``serving``, ``redis_server`` and
``dev`` for running it all on one machine; and ``cli``.
"""

__version__ = "0.1.0"
