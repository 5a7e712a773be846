"""rq-dashboard, as docker-compose.yml runs it, shows the relay's runs readably in a real browser.

Real parts only: the test Redis, a ``relay serve`` and a ``relay worker`` process, the runner sandbox, the
``rq-dashboard`` process with the options docker-compose.yml gives it, and Debian's headless Chromium driven
by Playwright. Every assertion reads what the browser rendered, not rq-dashboard's JSON.

Screenshots go to the test's tmp dir, and also to ``RELAY_SCREENSHOT_DIR`` when it is set
(``python docs/screenshots.py`` refreshes docs/img/ that way; ``tests.e2e.browser``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright
from redis import Redis
from rq import Queue
from rq.registry import BaseRegistry

from relay.dev.redis_server import free_port
from relay.settings import Settings
from tests.conftest import KNOWN_PHLO, UNKNOWN_PHLO, Sandbox, answers, clean_environment, poll
from tests.e2e.browser import CHROMIUM_ARGS, PNG_MAGIC, Processes, chromium_path, screenshot_dirs
from tests.e2e.deployment_files import dashboard_arguments

FORM = {"form": "callback-request", "name": "Ada", "phone": "+14155550123", "company_size": "1-10"}
SLOW_RUN_MS = 60_000  # the running run's request: longer than the test, shorter than its timeouts


@pytest.fixture
def slow_settings(settings: Settings) -> Settings:
    """Timeouts that let one run stay running (its request to the sandbox slow) for the whole test."""
    return settings.model_copy(update={"runner_read_timeout_s": 90.0, "job_timeout_s": 120})


@pytest.fixture
def processes() -> Iterator[Processes]:
    processes = Processes()
    yield processes
    processes.stop()


def post(url: str, body: dict[str, Any], source: str = "website-form") -> dict[str, Any]:
    response = httpx.post(f"{url}/hooks/{source}", json=body)
    assert response.status_code == 202, response.text
    answer: dict[str, Any] = response.json()
    return answer


def description(source: str, route: str, phlo_id: str, event_id: str) -> str:
    """The readable job description the relay promises dashboards."""
    return f"{source} -> {route} -> PHLO {phlo_id} (event {event_id})"


def holds(registry: BaseRegistry, count: int) -> bool | None:
    return registry.get_job_count(cleanup=False) == count or None


def test_rq_dashboard_shows_queued_running_scheduled_and_dead_lettered_runs(
    redis: Redis,
    slow_settings: Settings,
    sandbox: Sandbox,
    processes: Processes,
    tmp_path: Path,
) -> None:
    executable = chromium_path()
    settings = slow_settings
    env = clean_environment(**settings.as_environment())
    port, dashboard_port = free_port(), free_port()
    relay_url, dashboard_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{dashboard_port}"
    processes.start([sys.executable, "-m", "relay", "serve", "--port", str(port)], env)
    dashboard_env = clean_environment(RQ_DASHBOARD_REDIS_URL=settings.redis_url)
    dashboard = [*dashboard_arguments(), "--bind", "127.0.0.1", "--port", str(dashboard_port)]
    processes.start([sys.executable, "-m", "rq_dashboard", *dashboard], dashboard_env)
    poll(lambda: answers(f"{relay_url}/healthz"))

    queue = Queue(settings.queue_name, connection=redis)
    scheduled_registry = queue.scheduled_job_registry
    started_registry = queue.started_job_registry
    failed_registry = queue.failed_job_registry

    # Dead-lettered at the ingress: a matching route whose required `to` has no value.
    unmappable = post(relay_url, {**FORM, "submission_id": "sub-unmappable", "phone": ""})
    # A worker: one run answered 503 with Retry-After 120 (its retry scheduled two minutes ahead), one
    # refused 404 (a PHLO the runner does not know: dead-lettered), then one kept running by a slow answer.
    # One run at a time, so that a run stays queued behind the slow one; killed: SIGTERM would wait.
    processes.start([sys.executable, "-m", "relay", "worker", "--concurrency", "1"], env, kill=True)
    sandbox.fail(503, 1, retry_after=120)
    scheduled = post(relay_url, {**FORM, "submission_id": "sub-scheduled"})
    poll(lambda: holds(scheduled_registry, 1), timeout_s=30)
    rejected = post(relay_url, {"id": "misrouted-1"}, source="misrouted")
    poll(lambda: holds(failed_registry, 2), timeout_s=30)
    sandbox.fail(None, 1, latency_ms=SLOW_RUN_MS)
    running = post(relay_url, {**FORM, "submission_id": "sub-running"})
    poll(lambda: holds(started_registry, 1), timeout_s=30)
    queued = post(relay_url, {**FORM, "submission_id": "sub-queued"})  # the only worker is busy
    assert queue.count == 1

    def job(answer: dict[str, Any], source: str = "website-form") -> str:
        return description(source, "callback", KNOWN_PHLO, answer["event_id"])

    screenshots = screenshot_dirs(tmp_path)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})

        def shoot(name: str) -> None:
            for directory in screenshots:
                page.screenshot(path=directory / f"rq-dashboard-{name}.png", full_page=True)
            assert (tmp_path / f"rq-dashboard-{name}.png").read_bytes()[:8] == PNG_MAGIC

        page.goto(f"{dashboard_url}/")
        row = page.locator("tr[data-role=queue]", has_text=settings.queue_name)
        # Queue, queued, deferred, scheduled, started, finished, failed, canceled.
        expect(row.locator("td")).to_have_text([settings.queue_name, "1", "0", "1", "1", "0", "2", "0"])
        shoot("queues")

        def registry_page(name: str) -> Any:
            page.goto(f"{dashboard_url}/0/view/jobs/{settings.queue_name}/{name}/8/asc/1")
            rows = page.locator("tr[data-role=job]")
            expect(rows.first).to_be_visible()
            return rows

        expect(registry_page("queued").locator(".description")).to_have_text([job(queued)])
        expect(registry_page("started").locator(".description")).to_have_text([job(running)])
        shoot("running")
        expect(registry_page("scheduled").locator(".description")).to_have_text([job(scheduled)])
        shoot("scheduled")

        failed = registry_page("failed")
        dead_unmappable = failed.filter(has_text=unmappable["event_id"])
        expect(dead_unmappable.locator(".description")).to_have_text(job(unmappable))
        expect(dead_unmappable.locator("pre.exc_info")).to_contain_text(
            "MappingError: route 'callback': required payload key 'to': path 'phone' found no value"
        )
        dead_rejected = failed.filter(has_text=rejected["event_id"])
        expect(dead_rejected.locator(".description")).to_have_text(
            description("misrouted", "not-deployed", UNKNOWN_PHLO, rejected["event_id"])
        )
        expect(dead_rejected.locator("pre.exc_info")).to_contain_text("runner answered HTTP 404")
        shoot("dead-letters")
        browser.close()
