"""What ``format: e164`` costs the ingress: microseconds to map one event, with and without it, in one run.

The ingress maps each event on its event loop, so this is CPU the loop spends per event. Run:
``python -m bench.phones [--events N]``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from relay.mapping.config import RelayConfig, parse_config
from relay.mapping.routes import map_event

# As CRMs and forms store numbers: national, international, an extension, another country.
NUMBERS = ["(415) 555-0123", "+44 20 7946 0958", "415.555.0123 ext. 12", "+91 98765 43210"]


def _config(options: str) -> RelayConfig:
    text = f"""
sources:
  forms: {{}}
routes:
  - name: callback
    source: forms
    phlo_id: phlo-x
    payload:
      from: "+14155550100"
      to: {{path: phone, required: true{options}}}
      name: {{path: name}}
"""
    return parse_config(text, "bench.yaml")


def per_event_us(config: RelayConfig, documents: list[dict[str, Any]], events: int) -> float:
    """Mean microseconds of ``map_event`` over ``events`` events (after one warm-up pass)."""
    for document in documents:
        map_event(config, "forms", None, document)
    started = time.perf_counter()
    for index in range(events):
        map_event(config, "forms", None, documents[index % len(documents)])
    return (time.perf_counter() - started) / events * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args(argv)
    documents = [{"phone": number, "name": "Ada"} for number in NUMBERS]
    baseline = per_event_us(_config(""), documents, args.events)
    normalised = per_event_us(_config(", format: e164, default_region: US"), documents, args.events)
    print(f"map one event, payload `to` as stored:      {baseline:8.1f} us  (baseline)")
    print(
        f"map one event, `to` with format: e164:      {normalised:8.1f} us  (+{normalised - baseline:.1f} us)"
    )


if __name__ == "__main__":
    main()
