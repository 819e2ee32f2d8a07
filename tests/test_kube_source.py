"""exporter.kube driven through the real kubernetes client against tests/fake_k8s.py.

Every fault scenario ends with the same proof: the multiset of lines the source delivered
equals the lines the fake's container wrote (as the log API serves them), so nothing was lost
and nothing was delivered twice.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from exporter.kube import Cursor, KubeSource, Resume, parse_timestamp, since_time
from exporter.settings import KubeSettings
from tests.fake_k8s import FakeKube, Recorder, format_rfc3339nano, wait

pytestmark = pytest.mark.timeout(30)

NS = "default"
T0 = 1_700_000_000 * 1_000_000_000  # a whole second


@dataclass
class Running:
    kube: FakeKube
    rec: Recorder
    stop: threading.Event
    thread: threading.Thread

    def wait_lines(self, count: int, source: str | None = None, timeout: float = 6.0) -> None:
        assert wait(lambda: len(self.rec.lines(source)) >= count, timeout), (
            f"got {len(self.rec.lines(source))} of {count} lines"
        )

    def settle(self, expected: list[str], source: str, timeout: float = 6.0) -> None:
        """Wait for ``expected`` to arrive, then a little more to catch duplicates."""
        wait(lambda: len(self.rec.lines(source)) >= len(expected), timeout)
        time.sleep(0.3)
        assert Counter(self.rec.lines(source)) == Counter(expected)


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    with FakeKube() as fake:
        yield fake


def settings(kube: FakeKube, **overrides: object) -> KubeSettings:
    values: dict[str, object] = {
        "kubeconfig": kube.kubeconfig_path,
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.3,
        "request_timeout_s": 5.0,
        "watch_timeout_s": 30,
        "deleted_grace_s": 1.0,
    }
    values.update(overrides)
    return KubeSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
def run_source(kube: FakeKube) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(*, ready: bool = True, **overrides: object) -> Running:
        """Start the source; with ``ready``, wait for its first list (the "now" it starts at)."""
        rec, stop = Recorder(), threading.Event()
        source = KubeSource(settings(kube, **overrides))
        thread = threading.Thread(target=source.run, args=(rec.sink, stop, rec), daemon=True)
        thread.start()
        running = Running(kube, rec, stop, thread)
        started.append(running)
        if ready:
            assert wait(lambda: bool(rec.healths)), "the source never listed pods"
        return running

    yield start
    for running in started:
        running.stop.set()
        running.thread.join(8)
        assert not running.thread.is_alive(), "the source did not stop"


def access_lines(count: int, tag: str = "x") -> list[str]:
    """JSON access-log-like lines (the fake and the source treat them as opaque)."""
    lab = sorted(Path(__file__).parent.parent.glob("testdata/lab/json/*/client.log"))
    if lab:
        real = [line for line in lab[0].read_text().splitlines() if line.strip()]
        if real:
            return [real[i % len(real)] for i in range(count)]
    return [
        orjson.dumps({"start_time": f"2024-01-01T00:00:{i % 60:02d}Z", "tag": tag, "n": i}).decode()
        for i in range(count)
    ]


def numbered(count: int, tag: str) -> list[str]:
    return [f'{{"tag":"{tag}","n":{i}}}' for i in range(count)]


# -- the pure resume logic -------------------------------------------------------------------


def test_parse_timestamp_reads_trimmed_nanoseconds_and_offsets() -> None:
    assert parse_timestamp(f"{format_rfc3339nano(T0 + 120)} x") == T0 + 120
    assert parse_timestamp(f"{format_rfc3339nano(T0)} x") == T0
    assert parse_timestamp("2023-11-14T23:13:20.5+01:00 x") == T0 + 5 * 10**8
    assert parse_timestamp("no timestamp here") is None
    assert since_time(T0 + 999_999_999) == "2023-11-14T22:13:20Z"


def test_resume_skips_exactly_the_lines_delivered_at_the_cursor_timestamp() -> None:
    served = [f"{format_rfc3339nano(T0 + d)} {t}" for d, t in [(0, "a"), (5, "b"), (5, "c")]]
    first = Resume(None)
    assert first.admit(served[:2]) == served[:2]
    assert first.cursor == Cursor(T0 + 5, 1)
    again = Resume(first.cursor)
    assert again.admit(served) == served[2:]
    assert again.cursor == Cursor(T0 + 5, 2)


# -- discovery and following -----------------------------------------------------------------


def test_new_pod_is_followed_from_its_first_line(
    kube: FakeKube, run_source: Callable[..., Running]
) -> None:
    run = run_source()
    time.sleep(0.3)
    kube.add_pod(NS, "web-1", {"app": "web"}, lines=access_lines(5))
    kube.append_lines(NS, "web-1", access_lines(7, "later"))
    run.settle(kube.log_lines(NS, "web-1"), "default/web-1")
    assert all(c.framing == "timestamps" for c in run.rec.chunks)
    assert run.rec.healths[-1] == (True, "")


def test_existing_pod_is_followed_from_now(
    kube: FakeKube, run_source: Callable[..., Running]
) -> None:
    kube.add_pod(NS, "old", lines=numbered(3, "before"))
    run = run_source()
    assert wait(lambda: run.rec.active == 1)
    fresh = kube.append_lines(NS, "old", numbered(4, "after"))
    run.settle(fresh, "default/old")


def test_since_seconds_includes_recent_lines_of_existing_pods(
    kube: FakeKube, run_source: Callable[..., Running]
) -> None:
    now = time.time_ns()
    kube.add_pod(NS, "p", lines=[])
    kube.append_lines(NS, "p", ["ancient"], timestamps=[now - 3600 * 10**9])
    recent = kube.append_lines(NS, "p", ["recent"], timestamps=[now - 5 * 10**9])
    run = run_source(since_seconds=60)
    run.settle(recent, "default/p")


def test_pods_without_the_container_or_outside_the_selector_are_ignored(
    kube: FakeKube, run_source: Callable[..., Running]
) -> None:
    run = run_source(label_selector="app=web", namespaces=("default", "istio-system"))
    kube.add_pod(NS, "web", {"app": "web"}, lines=["w"])
    kube.add_pod(NS, "db", {"app": "db"}, lines=["d"])
    kube.add_pod(NS, "plain", {"app": "web"}, containers=("app",))
    kube.append_lines(NS, "plain", ["p"], container="app")
    kube.add_pod("other", "web", {"app": "web"}, lines=["o"])
    kube.add_pod("istio-system", "gw", {"app": "web"}, containers=("istio-proxy",), lines=["g"])
    kube.add_pod(NS, "native", {"app": "web"}, containers=("app",),
                 init_containers=("istio-proxy",), lines=["n"])  # fmt: skip
    wait(lambda: len(run.rec.lines()) >= 3)
    time.sleep(0.3)
    assert sorted(run.rec.texts()) == sorted(
        kube.log_lines(NS, "web") + kube.log_lines("istio-system", "gw")
        + kube.log_lines(NS, "native")
    )  # fmt: skip


# -- faults on the log stream ------------------------------------------------------------------


def test_stream_cut_mid_line_resumes_without_loss_or_duplicates(
    kube: FakeKube, run_source: Callable[..., Running]
) -> None:
    run = run_source()
    kube.add_pod(NS, "p")
    assert wait(lambda: run.rec.active == 1)
    kube.cut_log_streams(NS, "p", mid_line=True, after_lines=3)
    kube.append_lines(NS, "p", numbered(8, "a"))
    run.wait_lines(3)
    kube.append_lines(NS, "p", numbered(4, "b"))
    run.settle(kube.log_lines(NS, "p"), "default/p")
    assert any(reason == "connection_error" for _, reason in run.rec.restarts)
    assert kube.count_requests("log", "sinceTime=") >= 1


def test_identical_timestamps_straddling_a_resume_are_each_delivered_once(
    kube: FakeKube, run_source: Callable[..., Running]
) -> None:
    run = run_source()
    kube.add_pod(NS, "p")
    assert wait(lambda: run.rec.active == 1)
    now = time.time_ns()
    same = [now] * 6 + [now + 1000] * 3
    kube.cut_log_streams(NS, "p", mid_line=True, after_lines=4)
    kube.append_lines(NS, "p", ["same"] * 9, timestamps=same)
    run.settle(kube.log_lines(NS, "p"), "default/p")
    assert len(run.rec.lines()) == 9


def test_clean_end_of_stream_mid_line_resumes(
    kube: FakeKube, run_source: Callable[..., Running]
) -> None:
    run = run_source()
    kube.add_pod(NS, "p")
    assert wait(lambda: run.rec.active == 1)
    kube.cut_log_streams(NS, "p", mid_line=True, clean=True, after_lines=2)
    kube.append_lines(NS, "p", numbered(5, "a"))
    run.settle(kube.log_lines(NS, "p"), "default/p")
    assert ("default/p", "end_of_stream") in run.rec.restarts


def test_server_errors_are_retried_with_backoff(
    kube: FakeKube, run_source: Callable[..., Running]
) -> None:
    kube.add_pod(NS, "p", lines=numbered(2, "a"))
    kube.fail_next("log", 500, times=3)
    kube.fail_next("list", 503, times=2)
    start = time.monotonic()
    run = run_source(since_seconds=60)
    run.settle(kube.log_lines(NS, "p"), "default/p")
    assert kube.count_requests("list") == 3
    assert ("default/p", "server_error") in run.rec.restarts
    assert time.monotonic() - start > 0.05


def test_container_restart_recovers_the_previous_instance_tail(
    kube: FakeKube, run_source: Callable[..., Running]
) -> None:
    run = run_source()
    kube.add_pod(NS, "p")
    assert wait(lambda: run.rec.active == 1)
    kube.append_lines(NS, "p", numbered(3, "first"))
    run.wait_lines(3)
    # the stream breaks; the old instance writes more; then the container restarts
    kube.cut_log_streams(NS, "p", mid_line=False)
    kube.fail_next("log", 500, times=2, name="p")
    time.sleep(0.05)
    kube.append_lines(NS, "p", numbered(4, "first-tail"))
    kube.restart(NS, "p")
    kube.append_lines(NS, "p", numbered(3, "second"))
    run.settle(kube.log_lines(NS, "p"), "default/p")
    assert kube.count_requests("log", "previous=true") >= 1


def test_restart_while_following_ends_the_old_stream_and_follows_the_new_instance(
    kube: FakeKube, run_source: Callable[..., Running]
) -> None:
    run = run_source()
    kube.add_pod(NS, "p", lines=numbered(2, "a"))
    run.wait_lines(2)
    kube.restart(NS, "p")
    kube.append_lines(NS, "p", numbered(2, "b"))
    run.settle(kube.log_lines(NS, "p"), "default/p")
    assert kube.count_requests("log", "previous=true") >= 1
    # the reason is container_restart only if the watch reported the restart first
    assert {reason for _, reason in run.rec.restarts} <= {"container_restart", "end_of_stream"}


def test_silent_stream_is_reopened_after_the_idle_timeout_without_duplicates(
    kube: FakeKube, run_source: Callable[..., Running]
) -> None:
    run = run_source(stream_idle_timeout_s=0.4)
    kube.add_pod(NS, "p", lines=numbered(2, "a"))
    run.wait_lines(2)
    time.sleep(1.0)
    kube.append_lines(NS, "p", numbered(2, "b"))
    run.settle(kube.log_lines(NS, "p"), "default/p")
    assert ("default/p", "timeout") in run.rec.restarts


def test_forbidden_logs_of_a_deleted_pod_do_not_keep_the_source_unhealthy(
    kube: FakeKube, run_source: Callable[..., Running]
) -> None:
    run = run_source()
    kube.fail_next("log", 403, times=1000, name="p")
    kube.add_pod(NS, "p")
    assert wait(lambda: not run.rec.healths[-1][0])
    kube.delete(NS, "p")
    assert wait(lambda: run.rec.healths[-1] == (True, ""))


def test_slow_reads_split_lines_across_chunks(
    kube: FakeKube, run_source: Callable[..., Running]
) -> None:
    run = run_source()
    kube.add_pod(NS, "p")
    kube.slow(NS, "p", 0.01)
    kube.append_lines(NS, "p", access_lines(10))
    run.settle(kube.log_lines(NS, "p"), "default/p")


def test_pending_pod_answers_empty_or_400_until_it_starts(
    kube: FakeKube, run_source: Callable[..., Running]
) -> None:
    run = run_source()
    kube.add_pod(NS, "empty", pending="empty")
    kube.add_pod(NS, "bad", pending="400")
    time.sleep(0.4)
    assert run.rec.lines() == []
    kube.start_pod(NS, "empty")
    kube.start_pod(NS, "bad")
    kube.append_lines(NS, "empty", numbered(3, "e"))
    kube.append_lines(NS, "bad", numbered(3, "b"))
    run.settle(kube.log_lines(NS, "empty"), "default/empty")
    run.settle(kube.log_lines(NS, "bad"), "default/bad")


def test_pending_pod_that_claims_to_run_is_retried_without_spinning(
    kube: FakeKube, run_source: Callable[..., Running]
) -> None:
    run = run_source(backoff_initial_s=0.1, backoff_max_s=0.2)
    kube.add_pod(NS, "p")
    kube.fail_next("log", 400, times=1000, name="p")  # "waiting to start", status says running
    time.sleep(1.0)
    attempts = kube.count_requests("log")
    assert 2 <= attempts <= 20
    assert all(reason == "not_ready" for _, reason in run.rec.restarts)


# -- discovery faults ------------------------------------------------------------------------


def test_expired_watch_relists_and_picks_up_pods_created_meanwhile(
    kube: FakeKube, run_source: Callable[..., Running]
) -> None:
    run = run_source()
    kube.add_pod(NS, "a", lines=["a1"])
    run.wait_lines(1)
    lists = kube.count_requests("list")
    kube.expire_watches()
    kube.add_pod(NS, "b", lines=["b1"])
    kube.delete(NS, "a")
    run.settle(kube.log_lines(NS, "b"), "default/b")
    assert kube.count_requests("list") > lists
    assert ("watch:*", "watch_expired") in run.rec.restarts
    assert wait(lambda: run.rec.active == 1)


def test_http_410_on_watch_request_relists(
    kube: FakeKube, run_source: Callable[..., Running]
) -> None:
    kube.fail_next("watch", 410)
    run = run_source(ready=False)
    assert wait(lambda: kube.count_requests("list") >= 2)
    kube.add_pod(NS, "p", lines=["x"])
    run.settle(kube.log_lines(NS, "p"), "default/p")


def test_deleted_pod_closes_its_stream_after_its_last_lines(
    kube: FakeKube, run_source: Callable[..., Running]
) -> None:
    run = run_source()
    kube.add_pod(NS, "p", lines=numbered(3, "a"))
    run.wait_lines(3)
    kube.append_lines(NS, "p", numbered(2, "last"))
    expected = kube.log_lines(NS, "p")
    kube.delete(NS, "p")
    assert wait(lambda: run.rec.active == 0 and len(run.rec.closed) >= 1)
    run.settle(expected, "default/p")
    logs_before = kube.count_requests("log")
    time.sleep(0.5)
    assert kube.count_requests("log") == logs_before, "a deleted pod is not reopened"


def test_recreated_pod_with_the_same_name_is_followed_again(
    kube: FakeKube, run_source: Callable[..., Running]
) -> None:
    run = run_source()
    kube.add_pod(NS, "p", lines=["one"])
    run.wait_lines(1)
    first = kube.log_lines(NS, "p")
    kube.delete(NS, "p")
    kube.add_pod(NS, "p", lines=["two"])
    run.settle(first + kube.log_lines(NS, "p"), "default/p")


# -- permissions -----------------------------------------------------------------------------


def test_forbidden_list_makes_the_source_unhealthy_with_the_rbac_fix(
    kube: FakeKube, run_source: Callable[..., Running]
) -> None:
    kube.deny("pods")
    run = run_source(ready=False, backoff_initial_s=0.1, backoff_max_s=0.2)
    assert wait(lambda: bool(run.rec.healths))
    ok, reason = run.rec.healths[-1]
    assert not ok
    assert "Forbidden (403)" in reason and "pods/log" in reason and "list" in reason
    time.sleep(0.8)
    assert kube.count_requests("list") <= 12, "backs off instead of spinning"
    kube.allow("pods")
    kube.add_pod(NS, "p", lines=["x"])
    assert wait(lambda: run.rec.healths[-1] == (True, ""))
    run.settle(kube.log_lines(NS, "p"), "default/p")


def test_forbidden_pod_logs_make_the_source_unhealthy_until_allowed(
    kube: FakeKube, run_source: Callable[..., Running]
) -> None:
    kube.deny("pods/log")
    run = run_source()
    kube.add_pod(NS, "p", lines=numbered(2, "a"))
    assert wait(lambda: bool(run.rec.healths) and not run.rec.healths[-1][0])
    assert 'cannot get resource "pods/log"' in run.rec.healths[-1][1]
    kube.allow("pods/log")
    assert wait(lambda: run.rec.healths[-1] == (True, ""))
    run.settle(kube.log_lines(NS, "p"), "default/p")


def test_unauthorized_is_reported_clearly(
    kube: FakeKube, run_source: Callable[..., Running], tmp_path: Path
) -> None:
    bad = tmp_path / "kubeconfig"
    bad.write_text(kube.kubeconfig_text(token="wrong"))
    run = run_source(ready=False, kubeconfig=str(bad))
    assert wait(lambda: bool(run.rec.healths))
    ok, reason = run.rec.healths[-1]
    assert not ok and "Unauthorized (401)" in reason and "token" in reason


# -- bounded concurrency ---------------------------------------------------------------------


def test_open_streams_never_exceed_the_bound_and_waiting_pods_catch_up(
    kube: FakeKube, run_source: Callable[..., Running]
) -> None:
    run = run_source(max_concurrent_streams=2)
    for i in range(5):
        kube.add_pod(NS, f"p{i}", lines=[f"line {i}"])
    assert wait(lambda: len(run.rec.lines()) >= 2)
    time.sleep(0.5)
    assert kube.max_open_log_streams == 2
    assert run.rec.active == 2
    assert len(run.rec.lines()) == 2
    deleted: set[str] = set()
    for _ in range(3):  # delete the followed pods: the waiting ones get the slots, catch up
        for source in run.rec.following() - deleted:
            kube.delete(NS, source.split("/")[1])
            deleted.add(source)
        wait(lambda: len(run.rec.lines()) >= min(5, len(deleted) + 2))
    assert wait(lambda: len(run.rec.lines()) == 5)
    assert sorted(run.rec.texts()) == sorted(
        line for i in range(5) for line in kube.log_lines(NS, f"p{i}")
    )
    assert kube.max_open_log_streams == 2


def test_stop_returns_promptly_with_streams_open(
    kube: FakeKube, run_source: Callable[..., Running]
) -> None:
    run = run_source()
    for i in range(3):
        kube.add_pod(NS, f"p{i}")
    assert wait(lambda: run.rec.active == 3)
    started = time.monotonic()
    run.stop.set()
    run.thread.join(5)
    assert not run.thread.is_alive()
    assert time.monotonic() - started < 3
    assert run.rec.active == 0
