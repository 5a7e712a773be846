"""phlo-relay: CRM and form webhooks in, Plivo PHLO runs out.

The data path, one module a step, in the order a webhook travels:

1. ``ingress``   aiohttp app: ``POST /hooks/{source}``, ``GET /events/{event_id}``
2. ``parse``     request body (JSON, form) to one event document
3. ``config``    the mapping config: sources and routes, validated with pydantic
4. ``mapping``   event document to PHLO runs (JMESPath conditions and payloads)
5. ``enqueue``   runs stored as RQ jobs together with the event's record, in one transaction
6. ``worker``    the RQ job that delivers one run, and the worker processes
7. ``runner``    the client of Plivo's PHLO runner
8. ``outcome``   event and run records: queued, running, succeeded, failed, dead-lettered

Around it: ``settings``, ``errors``, ``keys``; the ``sandbox`` runner, ``serving``, ``redis_server`` and
``dev`` for running it all on one machine; and ``cli``.
"""

__version__ = "0.1.0"
