"""The benchmark harness's pure parts, so that bench/ cannot rot silently. No test here runs a benchmark."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from multidict import CIMultiDict

from bench import burst, cli, concurrency, document, ingress, latency, report, scheduling, targets, wrk
from bench.harness import (
    BenchError,
    Figures,
    descendants,
    max_in_window,
    percentile,
    pss_kib,
    rss_kib,
    summarise,
)
from bench.signing import (
    CONFIG,
    HOOK_PATH,
    SECRET_VARIABLE,
    SIGNATURE_HEADER,
    SOURCE,
    read_wrk_data,
    signed_requests,
    write_wrk_data,
)
from relay.errors import VerificationFailed
from relay.ingress.checks.request import HookRequest
from relay.ingress.verify import build_verifiers
from relay.mapping.config import parse_config
from relay.mapping.parse import parse_body
from relay.mapping.routes import map_event
from relay.mapping.split import split_events
from relay.queue.records import RunOutcome, RunStatus, Step


def test_percentile_is_the_nearest_rank() -> None:
    values = list(range(1, 101))  # 1 .. 100
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7.0], 99) == 7.0
    assert percentile([3, 1, 2], 50) == 2  # unsorted input
    with pytest.raises(ValueError):
        percentile([], 50)


def test_max_in_window_counts_the_busiest_half_open_window() -> None:
    times = [0.0, 1.0, 2.0, 4.9, 5.0, 5.1, 20.0]
    assert max_in_window(times, 5.0) == 5  # [1, 6) holds 1, 2, 4.9, 5.0, 5.1; [0, 5) leaves 5.0 out
    assert max_in_window(reversed(times), 5.0) == 5
    assert max_in_window([], 5.0) == 0
    assert max_in_window([1.0, 1.0, 1.0], 0.5) == 3


def test_summary_is_the_median_with_its_range() -> None:
    summary = summarise([3.0, 1.0, 10.0])
    assert (summary.median, summary.low, summary.high, summary.runs) == (3.0, 1.0, 10.0, 3)


def test_the_wrk_data_file_holds_webhooks_the_relay_verifies_and_maps(tmp_path: Path) -> None:
    secret = "bench-secret-for-the-test"
    path = tmp_path / "data.txt"
    assert write_wrk_data(path, signed_requests(secret, "t", 50)) == 50
    config = parse_config(CONFIG, "bench")
    verifier = build_verifiers(config.sources, {SECRET_VARIABLE: secret}, "bench")[SOURCE]
    event_ids = set()
    for signature, body in read_wrk_data(path):
        headers = CIMultiDict({"Content-Type": "application/json", SIGNATURE_HEADER: signature})
        request = HookRequest("POST", f"http://127.0.0.1{HOOK_PATH}", headers, body, "127.0.0.1")
        verifier.verify(request)  # raises VerificationFailed when the signature does not match
        [event] = split_events(config.sources[SOURCE], parse_body("application/json", body), headers, body)
        [run] = map_event(config, SOURCE, event.event_type, event.document).runs  # one run per webhook
        assert run.payload["ref"] == event.source_event_id  # what latency matches receipts by
        event_ids.add(event.source_event_id)
    assert len(event_ids) == 50  # unique: none would be answered as a duplicate
    other = build_verifiers(config.sources, {SECRET_VARIABLE: "another secret"}, "bench")[SOURCE]
    with pytest.raises(VerificationFailed):
        other.verify(request)


def test_wrk_result_counts_webhooks_apart_from_the_filler() -> None:
    line = (
        'BENCH-RESULT {"duration_us": 2000000, "requests": 110, "loaded": 100, "answered": 100, '
        '"duplicates": 0, "fillers_sent": 0, "statuses": {"202": 97, "503": 3, "404": 10}, "errors": '
        '{"connect": 0, "read": 1, "write": 0, "timeout": 0}, "latency_us": {"p50": 1500, "p90": 2000, '
        '"p99": 9000, "p999": 9500, "max": 12000, "mean": 1700.5}}'
    )
    result = wrk.parse_result(f"Running 2s test\n{line}\n")
    assert result.accepted == 97
    assert result.accepted_per_s == 48.5
    assert result.non_2xx == 3  # the filler's 404s are not webhooks
    assert result.server_errors == 3
    assert result.socket_errors == 1
    assert result.latency_ms["p99"] == 9.0
    assert wrk.SCRIPT.is_file()


def _repeat(**values: float) -> Figures:
    return Figures(values={key.replace("__", "."): value for key, value in values.items()})


def test_the_report_judges_medians_and_ratios_within_each_repetition() -> None:
    repeats = [
        _repeat(
            ingress__bare__rate=1000,
            ingress__relay__rate=600,
            ingress__relay__ratio=0.6,
            ingress__relay__p99_ms=30,
        ),
        _repeat(
            ingress__bare__rate=2000,
            ingress__relay__rate=800,
            ingress__relay__ratio=0.4,
            ingress__relay__p99_ms=20,
        ),
        _repeat(
            ingress__bare__rate=1500,
            ingress__relay__rate=825,
            ingress__relay__ratio=0.55,
            ingress__relay__p99_ms=24,
        ),
    ]
    repeats[0].notes["ingress.relay2"] = "n/a: not available"
    lines = {line.row.key: line for line in report.build_lines(repeats, workers=20)}
    rate = lines["ingress.relay.rate"]
    assert rate.verdict == "PASS"  # the median ratio, 0.55, not the ratio of medians
    assert rate.ratio.startswith("0.55x")
    assert lines["ingress.relay.p99_ms"].verdict == "PASS"  # median 24 ms
    assert lines["ingress.relay2.rate"].verdict == "n/a"
    assert "ingress.relay2.p99_ms" not in lines  # the note is shown once, for the whole case
    assert "delivery.one300.rate" not in lines  # not measured, no note: no row

    missed = report.build_lines([_repeat(delivery__one300__rate=50.0, delivery__pool300__rate=57.0)], 20)
    [one] = [line for line in missed if line.row.key == "delivery.one300.rate"]
    assert one.verdict == "MISS" and one.baseline == "57 /s"
    assert one.miss is not None and "50" in one.miss and "12 %" in one.miss  # against 57.1
    text, markdown = report.render_text(missed), report.render_markdown(missed)
    assert "MISS" in text and "**MISS**" in markdown


def test_derived_figures() -> None:
    figures = _repeat(
        ingress__relay__rate=500, ingress__relay2__rate=900, burst__sent=100, burst__accepted=98
    )
    targets.derive(figures)
    assert figures.values["ingress.relay2.scaling"] == 1.8
    assert figures.values["burst.not_accepted"] == 2


def test_steady_rate_skips_the_start_and_the_fill() -> None:
    times = [i / 100 for i in range(500)] + [5 + i / 50 for i in range(1000)]  # 100/s, then 50/s
    rate, span_s = concurrency.steady_rate(times, filled_at=0.0)
    assert rate == pytest.approx(50, rel=0.01)
    assert span_s == pytest.approx(25 - 10, abs=0.05)


def test_the_one_process_is_compared_with_its_pool_within_a_repetition() -> None:
    figures = _repeat(
        delivery__one300__rate=57.0,
        delivery__pool300__rate=57.5,
        delivery__one300__rss_mib=100.0,
        delivery__pool300__rss_mib=1300.0,
        delivery__one300__pss_mib=90.0,
        delivery__pool300__pss_mib=450.0,
    )
    concurrency.compare(figures, "one300", "pool300")
    concurrency.compare(figures, "one1000", "pool1000")  # not measured: nothing derived
    assert figures.values["delivery.one300.memory_less"] == 13.0
    assert figures.values["delivery.one300.pss_less"] == 5.0
    assert figures.values["delivery.one300.rate_ratio"] == pytest.approx(57.0 / 57.5)
    assert not any(key.startswith("delivery.one1000") for key in figures.values)


def test_a_retrys_lateness_is_its_second_request_past_the_due_time_in_its_history() -> None:
    history = [
        Step(at=100.0, status=RunStatus.FAILED, attempt=1, http_status=500, retry_in_s=7.5),
        Step(at=108.0, status=RunStatus.SUCCEEDED, attempt=2, http_status=201),
    ]
    run = RunOutcome(
        job_id="j", route="r", phlo_id="p", account="a", status=RunStatus.SUCCEEDED, history=history
    )
    receipts = [{"status": 201, "received_at": 107.75}, {"status": 500, "received_at": 100.0}]
    late = scheduling.lateness(run, receipts)
    assert (late.due_at, late.late_s, late.cut_short) == (107.5, 0.25, False)
    with pytest.raises(BenchError, match="Retry-After"):  # the retry met a fault meant for a first attempt
        scheduling.lateness(run, [receipts[1], {"status": 500, "received_at": 107.6}])
    interrupted = Step(at=104.0, status=RunStatus.FAILED, attempt=2, error="worker died", retry_in_s=0)
    cut = run.model_copy(update={"history": [history[0], interrupted, history[1]]})
    assert scheduling.lateness(cut, receipts).cut_short


def test_latency_matches_receipts_to_sends_by_ref() -> None:
    sent_at = {"a": 100.0, "b": 101.0}
    receipts: list[dict[str, object]] = [
        {"body": {"ref": "a"}, "received_at": 100.004},
        {"body": {"ref": "b"}, "received_at": 101.010},
        {"body": {"ref": "warm-up"}, "received_at": 99.0},
        {"body": None, "received_at": 99.0},
    ]
    assert [round(ms, 3) for ms in latency.latencies_ms(sent_at, receipts)] == [4.0, 10.0]


def test_outcomes_count_delivered_dead_and_unfinished_runs() -> None:
    outcomes = burst.Outcomes()
    for received_at, status, updated_at in [
        (10.0, "succeeded", 12.0),
        (11.0, "dead_lettered", 15.0),
        (12.0, "queued", 30.0),
    ]:
        run = json.dumps({"status": status, "updated_at": updated_at}).encode()
        outcomes.add(json.dumps({"received_at": received_at}).encode(), run)
    outcomes.add(None, None)  # an expired event: not counted
    assert (outcomes.events, outcomes.delivered, outcomes.dead_lettered, outcomes.unfinished) == (3, 1, 1, 1)
    assert (outcomes.first_received_at, outcomes.last_received_at, outcomes.last_ended_at) == (10, 12, 15)


def test_memory_of_this_process() -> None:
    assert rss_kib(os.getpid()) > 0
    assert 0 < pss_kib(os.getpid()) <= rss_kib(os.getpid()) + 1024
    assert os.getpid() in descendants(os.getpid())
    assert rss_kib(2**22 + 12345) == 0  # no such process


def test_the_command_line_and_document() -> None:
    args = cli.build_parser().parse_args(["--quick", "--only", "ingress,burst"])
    plans = cli.plans(args)
    assert args.only == ["ingress", "burst"]
    assert plans.burst.webhooks == 2000 and plans.burst.rate_limit_lifted
    assert all(line for line in plans.method())
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--only", "nonsense"])
    names = [name for name, _ in document.machine()]
    assert {"CPU", "cores", "RAM", "Python", "Redis", "packages"} <= set(names)
    assert ingress.SERVERS[0] == "bare"
