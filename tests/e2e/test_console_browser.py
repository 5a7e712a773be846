"""The operator console in real Chromium: log in, find an event by the sender's id, read its timeline and
payload, replay a dead letter, pause and resume a route, reveal a masked phone; each checked against Redis.

Real parts only: the test Redis, a ``relay serve`` and a ``relay worker`` process, the runner sandbox, and
Debian's headless Chromium driven by Playwright. A screenshot of every page goes to the test's tmp dir and
to ``RELAY_SCREENSHOT_DIR`` when set (``python docs/screenshots.py`` refreshes docs/img/console-*.png).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect, sync_playwright
from pydantic import SecretStr
from redis import Redis
from rq.job import Job
from rq.serializers import JSONSerializer

from relay import keys
from relay.outcome.deadletters import failed_registry
from relay.queue import records
from relay.queue.records import RunOutcome, RunStatus
from relay.settings import Settings
from tests.conftest import Sandbox, poll, watch_secrets
from tests.e2e.browser import CHROMIUM_ARGS, PNG_MAGIC, Processes, chromium_path, screenshot_dirs, start_relay

TOKEN = "console-browser-admin-token-8d2c"
watch_secrets(TOKEN)
PHONE = "+14155550123"
MASKED_PHONE = "+1415*****23"
SENDER_ID = "hs-contact-3201"
FORM = {"form": "callback-request", "name": "Ada", "phone": PHONE, "company_size": "1-10"}
# The timeline's kind of each history step the worker writes here.
KIND = {RunStatus.FAILED: "attempt_failed", RunStatus.SUCCEEDED: "succeeded", RunStatus.PAUSED: "paused"}


@pytest.fixture
def processes() -> Iterator[Processes]:
    processes = Processes()
    yield processes
    processes.stop()


def send(url: str, source: str, body: dict[str, Any]) -> str:
    answer = httpx.post(f"{url}/hooks/{source}", json=body)
    assert answer.status_code == 202, answer.text
    event_id: str = answer.json()["event_id"]
    return event_id


def run_of(redis: Redis, event_id: str) -> RunOutcome:
    view = records.read_event(redis, event_id)
    assert view is not None
    [run] = view.runs
    return run


def run_in(redis: Redis, event_id: str, *statuses: RunStatus) -> RunOutcome | None:
    run = run_of(redis, event_id)
    return run if run.status in statuses else None


def test_an_operator_finds_an_event_reads_its_story_replays_pauses_and_resumes(
    redis: Redis, settings: Settings, sandbox: Sandbox, processes: Processes, tmp_path: Path
) -> None:
    executable = chromium_path()
    settings = settings.model_copy(update={"admin_token": SecretStr(TOKEN)})
    url = start_relay(processes, settings)
    sandbox.fail(503, 1)  # the first attempt of the first run fails; its retry succeeds
    delivered = send(url, "website-form", {**FORM, "submission_id": SENDER_ID})
    poll(lambda: run_in(redis, delivered, RunStatus.SUCCEEDED), timeout_s=30)
    send(url, "website-form", {**FORM, "submission_id": "another-contact"})  # not what the search finds
    misrouted = send(url, "misrouted", {"id": "misrouted-7"})  # a PHLO the runner does not know: 404
    dead = poll(lambda: run_in(redis, misrouted, RunStatus.DEAD_LETTERED), timeout_s=30)
    failed_key = failed_registry(redis, settings).key
    poll(lambda: redis.zscore(failed_key, dead.job_id))  # RQ fails the job after the run's record

    directories = screenshot_dirs(tmp_path)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})

        def shoot(name: str) -> None:
            for directory in directories:
                page.screenshot(path=directory / f"console-{name}.png", full_page=True)
            assert (tmp_path / f"console-{name}.png").read_bytes()[:8] == PNG_MAGIC

        # Logged out, the console answers 401 with its login form.
        answer = page.goto(f"{url}/console/events")
        assert answer is not None and answer.status == 401
        shoot("login")
        page.fill("input[name=token]", TOKEN)
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(rf"{re.escape(url)}/console/(events)?$"))  # the Overview, or back
        page.goto(f"{url}/console/")
        shoot("overview")

        # Find the event by the sender's id.
        page.goto(f"{url}/console/events")
        expect(page.locator("#events tbody tr[data-event-id]")).to_have_count(3)
        shoot("events")
        page.fill("input[name=source_event_id]", SENDER_ID)
        page.click("#event-filters button[type=submit]")
        rows = page.locator("#events tbody tr[data-event-id]")
        expect(rows).to_have_count(1)
        expect(rows.first).to_have_attribute("data-event-id", delivered)
        expect(rows.first.locator(".sender-id")).to_have_text(SENDER_ID)
        expect(rows.first.locator(".run-status")).to_have_text("callback: succeeded")

        # Its story, as Redis holds it.
        rows.first.locator("a.event-link").click()
        page.wait_for_url(f"{url}/console/events/{delivered}")
        check_story(page, redis, delivered)
        shoot("event")
        # Masked until revealed.
        page.click("#reveal")
        page.wait_for_url(f"{url}/console/events/{delivered}?reveal=1")
        job = Job.fetch(run_of(redis, delivered).job_id, connection=redis, serializer=JSONSerializer)
        assert json.loads(page.inner_text("pre.payload")) == job.kwargs["payload"]
        assert job.kwargs["payload"]["to"] == PHONE and PHONE in page.inner_text("pre.payload")

        # Pause the dead letter's route, then replay it: queued again, the worker holds it.
        page.goto(f"{url}/console/routes")
        route_row = page.locator("#config-routes tr[data-route=not-deployed]")
        route_row.locator("input[name=reason]").fill("PHLO being deployed")
        route_row.get_by_role("button", name="pause route not-deployed").click()
        expect(route_row.locator("[data-paused='route:not-deployed']")).to_be_visible()
        pause = json.loads(redis.hget(keys.paused_key("route"), "not-deployed") or "null")
        assert pause is not None and pause["reason"] == "PHLO being deployed"
        shoot("routes")

        page.goto(f"{url}/console/events/{misrouted}")
        page.click("a.dead-letter-link")
        letter = page.locator(f"#dead-letters tr[data-job-id='{dead.job_id}']")
        expect(letter).to_be_visible()
        shoot("dead-letters")
        letter.get_by_role("link", name="Replay…").click()
        expect(page.locator(f"#confirm-letters tr[data-job-id='{dead.job_id}']")).to_be_visible()
        page.get_by_role("button", name="Replay 1").click()
        page.wait_for_load_state()
        assert redis.zscore(failed_key, dead.job_id) is None
        held_key = keys.held_key("route", "not-deployed")
        poll(lambda: redis.zscore(held_key, dead.job_id), timeout_s=30)
        replayed = run_of(redis, misrouted)
        assert replayed.status is RunStatus.PAUSED
        assert [step.note for step in replayed.history][-2:] == ["replayed", "route 'not-deployed' is paused"]

        # Resume: the pause is gone, its held run queued and tried again (a dead letter again: still 404).
        page.goto(f"{url}/console/routes")
        route_row.get_by_role("button", name="resume route not-deployed").click()
        expect(route_row.get_by_role("button", name="pause route not-deployed")).to_be_visible()
        assert redis.hget(keys.paused_key("route"), "not-deployed") is None
        assert redis.zscore(held_key, dead.job_id) is None
        poll(lambda: redis.zscore(failed_key, dead.job_id), timeout_s=30)
        page.goto(f"{url}/console/events/{misrouted}")
        kinds = page.locator("tr.step").evaluate_all("rows => rows.map(r => r.dataset.kind)")
        assert kinds[-4:] == ["dead_lettered", "replayed", "paused", "dead_lettered"], kinds
        browser.close()


def check_story(page: Page, redis: Redis, event_id: str) -> None:
    """The event page shows the record, the run's every step and its payload (masked) as Redis holds them."""
    view = records.read_event(redis, event_id)
    assert view is not None
    event, [run] = view.event, view.runs
    expect(page.locator("#source")).to_have_text(event.source)
    expect(page.locator("#sender-id")).to_contain_text(SENDER_ID)
    expect(page.locator("#event-type")).to_have_text(event.event_type or "")
    expect(page.locator("#request-id")).to_have_text(event.request_id or "")
    assert event.request_id and event.config_version
    expect(page.locator("#config-version")).to_have_text(event.config_version)
    steps = page.locator(f"section[data-job-id='{run.job_id}'] tr.step")
    expected = ["queued", *(KIND[step.status] for step in run.history)]
    assert expected == ["queued", "attempt_failed", "succeeded"]
    expect(steps).to_have_count(len(expected))
    for row, kind, step in zip(steps.all(), expected, [None, *run.history], strict=True):
        assert row.get_attribute("data-kind") == kind
        cells = row.locator("td").all_inner_texts()
        if step is not None:
            assert cells[2] == str(step.attempt) and cells[3] == str(step.http_status or "")
    expect(page.locator(".phlo-run-id")).to_have_text(run.phlo_run_id or "")
    expect(page.locator(".runner-message")).to_have_text(run.message or "")
    job = Job.fetch(run.job_id, connection=redis, serializer=JSONSerializer)
    payload = json.loads(page.inner_text("pre.payload"))
    assert payload == {**job.kwargs["payload"], "to": MASKED_PHONE, "from": "+1415*****00"}
    assert PHONE not in page.content()
