"""phlo-relay: CRM and form webhooks in, Plivo PHLO runs out.

One package per step, in the order a webhook travels (each opens with what comes in and what goes out):

1. ``ingress``  the aiohttp app: verify the sender (``verify`` with ``checks``), answer once stored;
                admin API, health, ``relay serve``
2. ``mapping``  a body to events (``parse``, ``split``) and each event to PHLO runs (``config``,
                ``routes``, ``expressions``): pure code, no I/O
3. ``queue``    the atomic ``store`` of events and runs as RQ ``jobs``; the event and run ``records``
                (their one writer), the ``retry`` policy, ``due`` retries back into the queue, the
                ``gauges`` metrics read
4. ``worker``   RQ worker processes (``threaded``), many runs in flight each (``slots``): the ``job``
                gets its ``context`` as ctx, ``runs`` records each transition once, ``stranded`` and
                ``rq_worker`` recover crashed runs
5. ``runner``   the PHLO runner's ``client``, the account's ``ratelimit`` and ``breaker``, the ``sandbox``
6. ``outcome``  ``deadletters`` listed, shown, purged, and ``replay`` (mapped again with the current config)

Beneath them ``infra`` (Redis connections, logs, metrics, supervisor, in-process servers) and the ground
modules ``settings`` (with ``redis_settings``), ``errors`` and ``keys``; above them ``dev`` (the whole
relay on one machine) and ``cli``. ``delivery`` only re-exports the jobs for runs stored under that path.
"""

__version__ = "0.1.0"
