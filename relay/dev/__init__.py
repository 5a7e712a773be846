"""``relay dev``: the whole relay on one machine: an embedded Redis, the ingress, a worker and the sandbox."""
