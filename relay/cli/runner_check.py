"""``relay check --runner``: each route's PHLO fetched at the runner with its account's credentials.

Each distinct (account, PHLO) pair is fetched once, as plivo-python's ``phlo.get()`` does it
(``GET /v1/phlo/{phlo_id}/``, Basic auth), by a few daemon threads that share one overall deadline, so an
unreachable or silent runner cannot hold the command past it. The runner's answer names no owning account
and it answers 404 for another account's PHLO as for one never deployed; so a PHLO that is unknown to its
route's account is looked up with the other configured accounts, and reported as theirs when one has it.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass

from relay.errors import RunnerError, RunnerRejected, RunnerUnreachable
from relay.mapping.config import RelayConfig
from relay.runner.client import PhloInfo, RunnerClient
from relay.settings import PlivoAccount, Settings

CHECK_THREADS = 8  # requests in flight: far below the runner's rate limit of 300 per 5 s

Pair = tuple[str, str]  # (account name, PHLO id)
Answer = PhloInfo | RunnerError


@dataclass(frozen=True)
class RouteProblem:
    """What is wrong at the runner for one route."""

    route: str
    problem: str

    def __str__(self) -> str:
        return f"route {self.route!r}: {self.problem}"


def fetch_all(
    client: RunnerClient, accounts: dict[str, PlivoAccount], pairs: list[Pair], deadline: float
) -> dict[Pair, Answer]:
    """The runner's answer to each pair; a pair left unanswered at ``deadline`` (monotonic) is absent."""
    todo: queue.SimpleQueue[Pair] = queue.SimpleQueue()
    for pair in pairs:
        todo.put(pair)
    answers: dict[Pair, Answer] = {}
    lock = threading.Lock()

    def work() -> None:
        while time.monotonic() < deadline:
            try:
                name, phlo_id = todo.get_nowait()
            except queue.Empty:
                return
            answer: Answer
            try:
                answer = client.get_phlo(accounts[name], phlo_id)
            except RunnerError as exc:
                answer = exc
            with lock:
                answers[(name, phlo_id)] = answer

    # Daemon threads: one still waiting on the runner at the deadline does not keep the command alive.
    threads = [threading.Thread(target=work, daemon=True) for _ in range(min(CHECK_THREADS, len(pairs)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0.0))
    with lock:
        return dict(answers)


def _status(answer: Answer | None) -> int | None:
    return answer.status if isinstance(answer, RunnerRejected) else None


def _redact(text: str, accounts: dict[str, PlivoAccount]) -> str:
    """The runner's own words, with any token it might echo masked."""
    for account in accounts.values():
        text = text.replace(account.auth_token.get_secret_value(), "***")
    return text


def describe(
    answer: Answer | None, name: str, account: PlivoAccount, phlo_id: str, owner: str | None, bound_s: float
) -> str | None:
    """The problem an answer shows for a route of account ``name`` and PHLO ``phlo_id``; None if none."""
    who = f"account {name!r} (auth id {account.auth_id})"
    if isinstance(answer, PhloInfo):
        return None
    if answer is None:
        return f"no answer from the runner within the {bound_s:g} s bound (PHLO {phlo_id})"
    if isinstance(answer, RunnerUnreachable):
        return f"runner unreachable: {answer.reason} (PHLO {phlo_id})"
    if _status(answer) == 401:
        return f"wrong credentials: the runner refused the Auth ID and Token of {who}"
    if _status(answer) == 404 and owner is not None:
        return f"PHLO {phlo_id} is of another account, {owner!r}, not of the route's {who}"
    if _status(answer) == 404:
        return f"unknown PHLO {phlo_id}: {who} has no such PHLO (not deployed, or of an unconfigured account)"
    return f"PHLO {phlo_id}: {answer}"


def check_runner(settings: Settings, config: RelayConfig, bound_s: float) -> list[RouteProblem]:
    """The problems of every route at the runner, found within ``bound_s`` seconds; empty if none."""
    deadline = time.monotonic() + bound_s
    problems: list[RouteProblem] = []
    accounts: dict[str, PlivoAccount] = {}
    for name in sorted(settings.account_names()):
        account = settings.account(name)
        if account is not None:
            accounts[name] = account
    for route in config.routes:
        if route.account not in accounts:
            problems.append(RouteProblem(route.name, f"no credentials for account {route.account!r}"))
    pairs = sorted({(route.account, route.phlo_id) for route in config.routes if route.account in accounts})
    client = RunnerClient(
        settings.runner_url,
        connect_timeout_s=min(settings.runner_connect_timeout_s, bound_s),
        read_timeout_s=min(settings.runner_read_timeout_s, bound_s),
    )
    with client:
        answers = fetch_all(client, accounts, pairs, deadline)
        # Is a PHLO unknown to its route's account one of another configured account's (valid) PHLOs?
        lookups = {
            (other, phlo_id)
            for (name, phlo_id), answer in answers.items()
            if _status(answer) == 404
            for other in accounts
            if accounts[other].auth_id != accounts[name].auth_id
        }
        found = fetch_all(client, accounts, sorted(lookups - set(answers)), deadline)
    known = {**answers, **found}
    owners = {
        phlo_id: name for name, phlo_id in sorted(lookups) if isinstance(known.get((name, phlo_id)), PhloInfo)
    }
    for route in config.routes:
        if route.account in accounts:
            answer = answers.get((route.account, route.phlo_id))
            account, owner = accounts[route.account], owners.get(route.phlo_id)
            problem = describe(answer, route.account, account, route.phlo_id, owner, bound_s)
            if problem is not None:
                problems.append(RouteProblem(route.name, _redact(problem, accounts)))
    return problems
