"""Script and markup sent by a sender never runs or renders in the console, on any page, in real Chromium.

Webhooks whose every sender-controlled field (body values, field names, headers, the sender's event id, the
event type) carries script, markup, ``javascript:`` and template payloads go through a real ``relay serve``
and ``relay worker`` to the runner sandbox, to be stored, delivered, dead-lettered or ignored. Then every
console page is opened twice, logged in: once with the browser bypassing the Content-Security-Policy, so
that only escaping stands between a payload and its execution, and once with it, where the policy must
report nothing (no inline script or foreign load was even attempted). Each time: no dialog, no
``window.__xss``, no element a payload would create, and the payloads shown as text.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Dialog, Page, sync_playwright
from pydantic import SecretStr
from redis import Redis

from relay.queue import records
from relay.queue.records import RunStatus
from relay.settings import Settings
from tests.conftest import Sandbox, poll, watch_secrets
from tests.e2e.browser import CHROMIUM_ARGS, Processes, chromium_path, start_relay

TOKEN = "console-injection-admin-token-0f3a"
watch_secrets(TOKEN)
PAYLOADS = [
    "<script>window.__xss=1</script>",
    '<img src=x onerror="window.__xss=1">',
    '"><svg onload="window.__xss=1">',
    '\'><iframe src="javascript:window.__xss=1"></iframe>',
    "javascript:window.__xss=1",
    "{{7*7}}{%raw%}${7*7}",
    "</textarea></pre></title><xss-probe>probe</xss-probe>",
]
EVIL = "".join(PAYLOADS)
PHONE = "+14155550123"
# What a payload would have created, had it been parsed as markup anywhere in a page.
INJECTED = "img[src='x'], iframe, svg[onload], [onerror], [onload], xss-probe, [href^='javascript:' i]"
CSP_REPORT = ("Content Security Policy", "Refused to")
FACTS = """injected => ({
    xss: typeof window.__xss,
    injected: [...document.querySelectorAll(injected)].map(element => element.outerHTML),
    scripts: [...document.scripts].map(script => script.getAttribute("src")),
    text: document.body.innerText,
})"""
DONE = {RunStatus.SUCCEEDED, RunStatus.DEAD_LETTERED}


@pytest.fixture
def processes() -> Iterator[Processes]:
    processes = Processes()
    yield processes
    processes.stop()


def send(url: str, source: str, body: dict[str, Any], **headers: str) -> str:
    answer = httpx.post(f"{url}/hooks/{source}", json=body, headers=headers)
    assert answer.status_code in (200, 202), answer.text
    event_id: str = answer.json()["event_id"]
    return event_id


def send_evil_webhooks(url: str) -> list[str]:
    """One event per way a sender's text reaches the console; their relay event ids."""
    header_id = {"X-Request-Id": f"4{EVIL}"}
    delivered = {"form": "callback-request", "submission_id": f"1{EVIL}", "name": EVIL, "phone": PHONE}
    return [
        # Delivered: the payload's `name` carries it; a field name carries it too.
        send(url, "website-form", {**delivered, "company_size": EVIL, EVIL: EVIL}),
        # Ignored: the event type carries it (no route takes that type).
        send(url, "website-form", {"form": EVIL, "submission_id": f"2{EVIL}", "phone": EVIL}),
        send(url, "typeform", {"event_id": f"3{EVIL}", "event_type": EVIL, EVIL: {EVIL: EVIL}}),
        # The sender's event id from a header (the relay makes its own request id for such a value); `to`
        # from a nested value (delivered as it is, or refused by a phone check: a dead letter).
        send(url, "hubspot-workflow", {"properties": {"phone": {"value": EVIL}}}, **header_id),
        # Dead-lettered by the runner (an unknown PHLO) ...
        send(url, "misrouted", {"id": f"5{EVIL}", "note": EVIL}),
        # ... and by the ingress (no `to`: unmappable).
        send(url, "website-form", {"form": "callback-request", "submission_id": f"6{EVIL}", "name": EVIL}),
    ]


def settled(redis: Redis, event_ids: list[str]) -> bool | None:
    """Whether every run of every event has succeeded or is a dead letter."""
    for event_id in event_ids:
        view = records.read_event(redis, event_id)
        if view is None or any(run.status not in DONE for run in view.runs):
            return None
    return True


def statuses(redis: Redis, event_id: str) -> list[RunStatus]:
    view = records.read_event(redis, event_id)
    assert view is not None
    return [run.status for run in view.runs]


def log_in(page: Page, url: str) -> None:
    page.goto(f"{url}/console/login")
    page.fill("input[name=token]", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/console/")


class Watched:
    """A logged-in page whose dialogs, script errors and CSP reports are collected."""

    def __init__(self, browser: Browser, url: str, *, bypass_csp: bool) -> None:
        self.context = browser.new_context(bypass_csp=bypass_csp, java_script_enabled=True)
        self.page = self.context.new_page()
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.page.on("dialog", self._dialog)
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("console", self._console)
        log_in(self.page, url)

    def _dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def _console(self, message: ConsoleMessage) -> None:
        if any(words in message.text for words in CSP_REPORT):
            self.errors.append(message.text)

    def visit(self, url: str, shows: list[str]) -> None:
        """Open ``url`` and check that nothing of a sender's ran or rendered, and that ``shows`` appear as
        text."""
        answer = self.page.goto(url)
        assert answer is not None and answer.status in (200, 400, 404), url
        # One round trip: what ran, what markup exists, which scripts, and the text shown.
        facts = self.page.evaluate(FACTS, INJECTED)
        assert facts["xss"] == "undefined", url
        assert facts["injected"] == [], (url, facts["injected"])
        # Only the console's own script files, never an inline one.
        assert all(src and src.startswith("/console/static/") for src in facts["scripts"]), (url, facts)
        for shown in shows:
            assert shown in facts["text"], (url, shown)
        assert self.dialogs == [], (url, self.dialogs)
        assert self.errors == [], (url, self.errors)

    def close(self) -> None:
        self.context.close()


def test_a_senders_script_and_markup_never_run_or_render_on_any_console_page(
    redis: Redis, settings: Settings, sandbox: Sandbox, processes: Processes, tmp_path: Path
) -> None:
    executable = chromium_path()
    settings = settings.model_copy(update={"admin_token": SecretStr(TOKEN)})
    url = start_relay(processes, settings)
    event_ids = send_evil_webhooks(url)
    poll(lambda: settled(redis, event_ids), timeout_s=30)
    delivered, ignored, typed, hubspot, dead, unmappable = event_ids
    assert statuses(redis, delivered) == [RunStatus.SUCCEEDED]
    assert statuses(redis, dead) == statuses(redis, unmappable) == [RunStatus.DEAD_LETTERED]
    assert statuses(redis, ignored) == statuses(redis, typed) == []
    assert statuses(redis, hubspot)[0] in DONE

    evil_filters = {"source": EVIL, "route": EVIL, "source_event_id": EVIL, "status": EVIL, "since": EVIL}
    pages: list[tuple[str, list[str]]] = [
        ("/console/", []),
        ("/console/events", [f"1{EVIL}", f"4{EVIL}", f"5{EVIL}", EVIL]),
        ("/console/events?" + urlencode({"source_event_id": f"1{EVIL}"}), [f"1{EVIL}"]),
        ("/console/events?" + urlencode({"source": "typeform", "status": "ignored"}), [f"3{EVIL}", EVIL]),
        ("/console/events?" + urlencode(evil_filters), [EVIL]),  # refused (400), the values echoed
        # Unknown (404), the id echoed; without slashes, which no path segment holds.
        ("/console/events/" + quote(EVIL.replace("/", ""), safe=""), [EVIL.replace("/", "")]),
        ("/console/dead-letters", []),
        ("/console/dead-letters?" + urlencode({"source": EVIL, "route": EVIL, "reason": EVIL}), []),
        ("/console/routes", []),
    ]
    for event_id, sender_id in zip(event_ids, "123456", strict=True):
        for reveal in ("", "?reveal=1"):
            shows = [
                f"{sender_id}{EVIL}",
                *([PAYLOADS[0]] if event_id == delivered else []),
            ]  # in the payload
            pages.append((f"/console/events/{event_id}{reveal}", shows))
    # With the policy on, the masked event pages add nothing to what the revealed ones show.
    enforced = [(path, shows) for path, shows in pages if "/evt_" not in path or "reveal=1" in path]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        for bypass_csp in (True, False):
            watched = Watched(browser, url, bypass_csp=bypass_csp)
            for path, shows in pages if bypass_csp else enforced:
                watched.visit(f"{url}{path}", shows)
            # The filter form holds the values as they were typed, not as markup.
            watched.page.goto(f"{url}/console/events?" + urlencode(evil_filters))
            assert watched.page.input_value("input[name=source_event_id]") == EVIL
            assert watched.page.input_value("input[name=since]") == EVIL
            watched.close()
        browser.close()
