"""Tests for :mod:`supervisor`.

Rules for this module:

* Every test runs on trio's autojump :class:`~trio.testing.MockClock`: it takes the
  ``autojump_clock`` fixture that pytest-trio ships (``MockClock(autojump_threshold=0)``;
  pytest-trio hands any fixture that is a :class:`trio.abc.Clock` to ``trio.run``).
  Time is virtual, so backoff delays are asserted exactly with ``trio.current_time()``
  and no test ever waits on the real clock.
* No sockets, no threads, no real sleeps: children are small async functions that
  record what happened to them.
* Each test asserts on observable behaviour -- states, counts, times, exceptions, log
  lines -- that would change if the supervisor's semantics broke.
"""

from __future__ import annotations

import functools
import logging

import pytest
import trio

from supervisor import ChildSpec, Observer, ObserverSet, Restart, Supervisor, SupervisorEscalation, run_root


class OnRestart(Observer):
    """A watcher that hands each restart to ``record(spec, count)``."""

    def __init__(self, record):
        self.record = record

    def child_restarted(self, spec, count):
        self.record(spec, count)


class Recorder:
    """A child's behaviours, recording when each run started and how it was cancelled."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.cancelled = 0

    @property
    def runs(self) -> int:
        return len(self.starts)

    async def forever(self) -> None:
        self.starts.append(trio.current_time())
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            self.cancelled += 1
            raise

    async def crash(self) -> None:
        self.starts.append(trio.current_time())
        await trio.sleep(0)
        raise ValueError("boom")

    async def crash_then_forever(self, crashes: int) -> None:
        if self.runs < crashes:
            await self.crash()
        await self.forever()

    async def return_then_forever(self, returns: int) -> None:
        if self.runs < returns:
            self.starts.append(trio.current_time())
            return
        await self.forever()


def spec(child_id: str, fn, *args, **options) -> ChildSpec:
    return ChildSpec(child_id, functools.partial(fn, *args), **options)


def log_lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "supervisor"]


# -- restart policies ----------------------------------------------------------------


async def test_permanent_child_is_restarted_after_a_crash(autojump_clock):
    rec = Recorder()
    sup = Supervisor("root", [spec("w", rec.crash_then_forever, 2)])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(10)
        state = sup.children()["w"]
        assert (state.state, state.restarts, rec.runs) == ("running", 2, 3)
        assert state.last_error == "ValueError: boom"
        assert sup.healthy()
        nursery.cancel_scope.cancel()


async def test_permanent_child_is_restarted_after_a_normal_return(autojump_clock):
    rec = Recorder()
    sup = Supervisor("root", [spec("w", rec.return_then_forever, 1)])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(10)
        state = sup.children()["w"]
        assert (state.state, state.restarts, rec.runs) == ("running", 1, 2)
        assert state.last_error is None
        nursery.cancel_scope.cancel()


async def test_transient_child_is_restarted_only_after_a_crash(autojump_clock):
    runs = 0

    async def child():
        nonlocal runs
        runs += 1
        await trio.sleep(1)
        if runs == 1:
            raise ValueError("boom")

    sup = Supervisor("root", [ChildSpec("t", child, restart=Restart.TRANSIENT)])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(10)
        state = sup.children()["t"]
        assert runs == 2
        assert (state.state, state.restarts) == ("exited", 1)
        assert not sup.has_child("t")
        assert sup.healthy()  # returning is not being down
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("crash", [True, False], ids=["crash", "return"])
async def test_temporary_child_is_never_restarted(autojump_clock, crash):
    rec = Recorder()
    if crash:
        child = spec("t", rec.crash, restart=Restart.TEMPORARY)
    else:
        child = spec("t", rec.return_then_forever, 1, restart=Restart.TEMPORARY)
    sup = Supervisor("root", [child])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(10)
        state = sup.children()["t"]
        assert rec.runs == 1
        assert (state.state, state.restarts) == ("crashed" if crash else "exited", 0)
        assert sup.healthy() is not crash  # a critical child that crashed for good is down
        nursery.cancel_scope.cancel()


async def test_a_crash_restarts_only_that_child(autojump_clock):
    crasher, sibling = Recorder(), Recorder()
    sup = Supervisor(
        "root", [spec("sibling", sibling.forever), spec("crasher", crasher.crash_then_forever, 1)]
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(10)
        assert crasher.runs == 2
        assert (sibling.runs, sibling.cancelled) == (1, 0)
        nursery.cancel_scope.cancel()


async def test_non_critical_crash_keeps_supervisor_healthy(autojump_clock):
    rec = Recorder()
    sup = Supervisor(
        "root", [spec("t", rec.crash, restart=Restart.TEMPORARY, critical=False)]
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(1)
        assert sup.children()["t"].state == "crashed"
        assert sup.healthy()
        nursery.cancel_scope.cancel()
    assert not sup.healthy()  # not running any more


# -- intensity and escalation --------------------------------------------------------


async def test_exceeding_intensity_stops_all_children_and_escalates(autojump_clock):
    crasher, sibling = Recorder(), Recorder()
    restarts = []
    sup = Supervisor(
        "root",
        [spec("sibling", sibling.forever), spec("crasher", crasher.crash)],
        intensity=3,
        period=5.0,
        observer=OnRestart(lambda s, n: restarts.append((s.id, n))),
    )
    with pytest.raises(SupervisorEscalation) as info:
        await sup.run()

    exc = info.value
    assert (exc.supervisor, exc.child_id, exc.restarts, exc.period) == ("root", "crasher", 4, 5.0)
    assert isinstance(exc.error, ValueError)
    assert exc.__cause__ is exc.error
    assert str(exc) == (
        "restart intensity exceeded in supervisor root (child crasher: ValueError: boom)"
    )
    assert crasher.runs == 4  # the first run, then exactly `intensity` restarts
    assert restarts == [("crasher", 1), ("crasher", 2), ("crasher", 3)]
    assert sibling.cancelled == 1
    children = sup.children()
    assert children["sibling"].state == "stopped"
    assert (children["crasher"].state, children["crasher"].restarts) == ("crashed", 3)
    assert not sup.healthy()


async def test_intensity_counts_restarts_across_children(autojump_clock):
    a, b = Recorder(), Recorder()
    restarts = []
    sup = Supervisor(
        "root",
        [spec("a", a.crash_then_forever, 2), spec("b", b.crash_then_forever, 2)],
        intensity=3,
        observer=OnRestart(lambda s, n: restarts.append(s.id)),
    )
    with pytest.raises(SupervisorEscalation) as info:
        await sup.run()
    # Each child alone stays within intensity 3; together their four crashes do not.
    assert (a.runs, b.runs) == (2, 2)
    assert len(restarts) == 3 and set(restarts) == {"a", "b"}
    assert info.value.restarts == 4
    assert sum(state.restarts for state in sup.children().values()) == 3


async def test_permanent_child_returning_in_a_loop_escalates(autojump_clock):
    async def returns():
        await trio.sleep(0)

    sup = Supervisor("root", [ChildSpec("w", returns)], intensity=2)
    with pytest.raises(SupervisorEscalation) as info:
        await sup.run()
    assert info.value.error is None
    assert str(info.value).endswith("(child w: returned normally)")


async def test_restarts_spread_wider_than_period_do_not_escalate(autojump_clock):
    rec = Recorder()

    async def crash_after_six_seconds():
        rec.starts.append(trio.current_time())
        await trio.sleep(6)
        raise ValueError("late")

    sup = Supervisor("root", [ChildSpec("w", crash_after_six_seconds)], intensity=1, period=5.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(60)
        assert sup.children()["w"].state in {"running", "restarting"}
        nursery.cancel_scope.cancel()
    assert rec.runs >= 9
    # Having run for at least `period`, the child starts its backoff over each time.
    gaps = [later - earlier for earlier, later in zip(rec.starts, rec.starts[1:])]
    assert gaps == pytest.approx([6.1] * len(gaps))


async def test_escalation_while_starting_static_children_fails_start(autojump_clock):
    sibling = Recorder()

    async def crash_at_once():
        raise ValueError("bad config")

    sup = Supervisor(
        "root",
        [ChildSpec("bad", crash_at_once), spec("later", sibling.forever)],
        intensity=0,
    )
    async with trio.open_nursery() as nursery:
        with pytest.raises(SupervisorEscalation):
            await nursery.start(sup.run)
    assert sibling.runs == 0


async def test_nested_escalation_is_a_crash_in_the_parent(autojump_clock):
    worker = Recorder()
    # The worker crashes twice: the inner supervisor (intensity 1) gives up on the
    # second crash; the parent restarts it, and the worker's third run succeeds.
    inner = Supervisor("inner", [spec("w", worker.crash_then_forever, 2)], intensity=1)
    parent_restarts = []
    parent = Supervisor(
        "parent",
        [ChildSpec("inner", inner.run, kind="supervisor")],
        observer=OnRestart(lambda s, n: parent_restarts.append((s.id, n))),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(parent.run)
        await trio.sleep(10)
        state = parent.children()["inner"]
        assert (state.state, state.restarts) == ("running", 1)
        assert state.last_error.startswith("SupervisorEscalation: restart intensity exceeded")
        assert parent_restarts == [("inner", 1)]
        assert worker.runs == 3
        assert inner.children()["w"].state == "running"
        assert inner.healthy() and parent.healthy()
        nursery.cancel_scope.cancel()


# -- stopping is not crashing --------------------------------------------------------


async def test_stop_child_is_not_a_crash(autojump_clock):
    rec, other = Recorder(), Recorder()
    restarts = []
    sup = Supervisor(
        "root",
        [spec("w", rec.forever), spec("other", other.forever)],
        intensity=0,  # any restart at all would escalate
        observer=OnRestart(lambda s, n: restarts.append(n)),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        assert await sup.stop_child("w") is True
        assert rec.cancelled == 1  # it has exited by the time stop_child returns
        await trio.sleep(60)
        state = sup.children()["w"]
        assert (state.state, state.restarts, rec.runs) == ("stopped", 0, 1)
        assert restarts == []
        assert not sup.has_child("w")
        assert sup.has_child("other") and other.cancelled == 0
        assert sup.healthy()
        assert await sup.stop_child("w") is False
        assert await sup.stop_child("nobody") is False
        nursery.cancel_scope.cancel()


async def test_stop_child_during_backoff(autojump_clock):
    rec = Recorder()
    sup = Supervisor("root", [spec("w", rec.crash)], backoff_initial=10)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(1)
        assert sup.children()["w"].state == "restarting"
        assert await sup.stop_child("w") is True
        await trio.sleep(60)
        assert rec.runs == 1
        assert sup.children()["w"].state == "stopped"
        nursery.cancel_scope.cancel()


async def raises_on_cleanup():
    try:
        await trio.sleep_forever()
    finally:
        raise ValueError("cleanup failed")


async def raises_group_on_cleanup():
    # One part raises while the other is cancelled: the child ends with a group that
    # mixes the error with trio.Cancelled.
    async with trio.open_nursery() as nursery:
        nursery.start_soon(raises_on_cleanup)
        nursery.start_soon(trio.sleep_forever)


async def swallows_cancellation():
    try:
        await trio.sleep_forever()
    except trio.Cancelled:
        return  # a misbehaving child; still a stop, not a normal exit


@pytest.mark.parametrize(
    "child, error",
    [
        (raises_on_cleanup, "ValueError: cleanup failed"),
        (raises_group_on_cleanup, "ExceptionGroup: [ValueError: cleanup failed]"),
        (swallows_cancellation, None),
    ],
)
@pytest.mark.parametrize("how", ["stop_child", "outer_cancel"])
async def test_a_child_ending_oddly_while_stopped_is_still_stopped(
    autojump_clock, caplog, child, error, how
):
    caplog.set_level(logging.INFO, logger="supervisor")
    runs = 0

    async def counted():
        nonlocal runs
        runs += 1
        await child()

    sup = Supervisor("root", [ChildSpec("w", counted)], intensity=0)  # no restart allowed
    with trio.move_on_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            if how == "stop_child":
                assert await sup.stop_child("w") is True
            else:
                nursery.cancel_scope.cancel()
    assert (runs, sup.children()["w"].state) == (1, "stopped")
    reason = "stop" if how == "stop_child" else "shutdown"
    expected = f"supervisor=root event=child_stopped child=w reason={reason}"
    if error is not None:
        expected += f" error={error}"
    lines = log_lines(caplog)
    assert expected in lines
    assert not any("child_crashed" in line or "escalation" in line for line in lines)


async def test_outer_cancellation_is_not_a_crash(autojump_clock, caplog):
    caplog.set_level(logging.INFO, logger="supervisor")
    rec = Recorder()
    sup = Supervisor("root", [spec("w", rec.forever)], intensity=0)
    reached_after_run = False
    with trio.move_on_after(5) as scope:
        await sup.run()
        reached_after_run = True
    assert scope.cancelled_caught and not reached_after_run  # Cancelled propagated
    state = sup.children()["w"]
    assert (state.state, state.restarts, rec.cancelled) == ("stopped", 0, 1)
    lines = log_lines(caplog)
    assert not any("child_crashed" in line or "child_restarting" in line for line in lines)
    assert "supervisor=root event=child_stopped child=w reason=shutdown" in lines
    assert lines[-1] == "supervisor=root event=shutdown reason=cancelled"


async def test_shutdown_stops_children_and_run_returns(autojump_clock):
    rec = Recorder()
    sup = Supervisor("root", [spec("w", rec.forever)])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sup.run)
        await trio.sleep(1)
        sup.shutdown()
    assert rec.cancelled == 1
    assert sup.children()["w"].state == "stopped"


# -- backoff -------------------------------------------------------------------------


async def test_backoff_doubles_up_to_the_maximum(autojump_clock):
    rec = Recorder()
    sup = Supervisor(
        "root",
        [spec("w", rec.crash)],
        intensity=6,
        period=100,
        backoff_initial=0.1,
        backoff_max=0.5,
    )
    with pytest.raises(SupervisorEscalation):
        await sup.run()
    gaps = [later - earlier for earlier, later in zip(rec.starts, rec.starts[1:])]
    # min(0.1 * 2**(n-1), 0.5) for restarts n = 1..6
    assert gaps == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5, 0.5])


# -- dynamic children ----------------------------------------------------------------


async def test_dynamic_children_start_and_stop_by_id(autojump_clock):
    a, b, again = Recorder(), Recorder(), Recorder()
    sup = Supervisor("root")
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(60)  # with no children it keeps running
        assert sup.children() == {}

        await sup.start_child(spec("position:1", a.forever, kind="position"))
        await sup.start_child(spec("position:2", b.forever, kind="position"))
        assert a.runs == 1 and b.runs == 1
        assert sup.has_child("position:1") and sup.has_child("position:2")
        assert sup.children()["position:1"].kind == "position"

        with pytest.raises(ValueError, match="already running"):
            await sup.start_child(spec("position:1", a.forever))
        assert a.runs == 1

        assert await sup.stop_child("position:1") is True
        assert not sup.has_child("position:1")
        assert "position:1" not in sup.children()  # dynamic children that stop are forgotten
        assert sup.has_child("position:2") and b.cancelled == 0

        await sup.start_child(spec("position:1", again.forever))  # the id is free again
        assert sup.has_child("position:1") and again.runs == 1
        nursery.cancel_scope.cancel()


async def test_start_child_needs_a_running_supervisor():
    sup = Supervisor("root")
    with pytest.raises(RuntimeError, match="not running"):
        await sup.start_child(ChildSpec("x", trio.sleep_forever))


def test_duplicate_static_ids_are_rejected():
    with pytest.raises(ValueError, match="duplicate"):
        Supervisor("root", [ChildSpec("x", trio.sleep_forever), ChildSpec("x", trio.sleep_forever)])


# -- callbacks and logs --------------------------------------------------------------


async def test_failing_observer_does_not_break_supervision(autojump_clock, caplog):
    rec = Recorder()

    def on_restart(spec, count):
        raise RuntimeError("metrics down")

    sup = Supervisor("root", [spec("w", rec.crash_then_forever, 2)], observer=OnRestart(on_restart))
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(10)
        assert (rec.runs, sup.children()["w"].state) == (3, "running")
        nursery.cancel_scope.cancel()
    assert (
        "supervisor=root event=observer_failed child=w error=RuntimeError: metrics down"
        in log_lines(caplog)
    )


async def test_an_observer_set_tells_every_watcher_and_survives_a_failing_one(autojump_clock, caplog):
    rec = Recorder()
    seen = []

    def broken(spec, count):
        raise RuntimeError("metrics down")

    watchers = ObserverSet(OnRestart(broken))
    sup = Supervisor("root", [spec("w", rec.crash_then_forever, 2)], observer=watchers)
    watchers.add(OnRestart(lambda s, n: seen.append((s.id, n))))
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(10)
        assert (rec.runs, sup.children()["w"].state) == (3, "running")
        nursery.cancel_scope.cancel()
    assert seen == [("w", 1), ("w", 2)]
    failures = [r for r in caplog.records if r.name == "observer"]
    assert len(failures) == 1 and "OnRestart.child_restarted failed" in failures[0].getMessage()


async def test_log_lines(autojump_clock, caplog):
    caplog.set_level(logging.INFO, logger="supervisor")

    async def crash_later():
        await trio.sleep(1)
        raise ValueError("boom")

    sup = Supervisor("root", [ChildSpec("position:42", crash_later, kind="position")], intensity=2)
    with pytest.raises(SupervisorEscalation):
        await sup.run()
    lines = log_lines(caplog)
    assert lines == [
        "supervisor=root event=child_started child=position:42 kind=position",
        "supervisor=root event=started children=1",
        "supervisor=root event=child_crashed child=position:42 error=ValueError: boom",
        "supervisor=root event=child_restarting child=position:42 restart=1 delay=0.100s",
        "supervisor=root event=child_started child=position:42 kind=position restart=1",
        "supervisor=root event=child_crashed child=position:42 error=ValueError: boom",
        "supervisor=root event=child_restarting child=position:42 restart=2 delay=0.200s",
        "supervisor=root event=child_started child=position:42 kind=position restart=2",
        "supervisor=root event=child_crashed child=position:42 error=ValueError: boom",
        "supervisor=root event=escalation restarts=3 period=5.0s child=position:42 "
        "error=ValueError: boom",
        "supervisor=root event=shutdown reason=escalation",
    ]
    levels = {r.getMessage().split()[1]: r.levelno for r in caplog.records}
    assert levels["event=child_crashed"] == logging.WARNING
    assert levels["event=escalation"] == logging.ERROR
    # Tracebacks only when DEBUG is enabled.
    assert all(r.exc_info is None for r in caplog.records)


async def test_crash_traceback_is_logged_at_debug(autojump_clock, caplog):
    caplog.set_level(logging.DEBUG, logger="supervisor")
    rec = Recorder()
    sup = Supervisor("root", [spec("w", rec.crash_then_forever, 1)])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    (crash,) = [r for r in caplog.records if "event=child_crashed" in r.getMessage()]
    assert crash.exc_info is not None and crash.exc_info[0] is ValueError


async def test_custom_logger_is_used(autojump_clock, caplog):
    caplog.set_level(logging.INFO, logger="apm.feeds")
    logger = logging.getLogger("apm.feeds")
    sup = Supervisor("feeds", [ChildSpec("f", trio.sleep_forever)], logger=logger)
    with trio.move_on_after(1):
        await sup.run()
    assert "supervisor=feeds event=child_started child=f kind=worker" in [
        r.getMessage() for r in caplog.records if r.name == "apm.feeds"
    ]


# -- run_root ------------------------------------------------------------------------


async def test_run_root_returns_1_on_escalation(autojump_clock, caplog):
    rec = Recorder()
    sup = Supervisor("root", [spec("feed", rec.crash)], intensity=1)
    assert await run_root(sup) == 1
    critical = [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL]
    assert critical == [
        "service stopping: restart intensity exceeded in supervisor root "
        "(child feed: ValueError: boom)"
    ]


async def test_run_root_returns_0_on_clean_shutdown(autojump_clock, caplog):
    rec = Recorder()
    sup = Supervisor("root", [spec("feed", rec.forever)])
    async with trio.open_nursery() as nursery:
        status = []

        async def main():
            status.append(await run_root(sup))

        nursery.start_soon(main)
        await trio.sleep(1)
        sup.shutdown()
    assert status == [0]
    assert rec.cancelled == 1
    assert not any(r.levelno >= logging.ERROR for r in caplog.records)


async def test_run_root_lets_outer_cancellation_propagate(autojump_clock):
    sup = Supervisor("root", [ChildSpec("feed", trio.sleep_forever)])
    status = []
    with trio.move_on_after(1) as scope:
        status.append(await run_root(sup))
    assert scope.cancelled_caught and status == []


async def test_a_supervisor_runs_once_at_a_time(autojump_clock):
    sup = Supervisor("root")
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        with pytest.raises(RuntimeError, match="already running"):
            await sup.run()
        nursery.cancel_scope.cancel()


async def test_start_child_waits_for_a_child_that_reports_started(autojump_clock):
    sup = Supervisor("s", backoff_initial=1.0)
    runs: list[bool] = []  # per run: whether it was handed a real task_status

    async def child(*, task_status=trio.TASK_STATUS_IGNORED):
        runs.append(task_status is not trio.TASK_STATUS_IGNORED)
        await trio.sleep(5)  # loading its state
        task_status.started()
        if len(runs) == 1:
            raise ValueError("crash after starting")
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        t0 = trio.current_time()
        await sup.start_child(ChildSpec("c", child, Restart.TRANSIENT, reports_started=True))
        assert trio.current_time() - t0 == 5  # returned once the child said it was ready
        await trio.sleep(10)
        assert runs == [True, False]  # the restart is not waited for
        assert sup.children()["c"].state == "running" and sup.children()["c"].restarts == 1
        nursery.cancel_scope.cancel()


async def test_start_child_returns_when_a_reporting_child_ends_before_it_started(autojump_clock):
    sup = Supervisor("s", backoff_initial=1.0)
    runs = Recorder()

    async def child(*, task_status=trio.TASK_STATUS_IGNORED):
        await runs.crash_then_forever(1)

    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await sup.start_child(ChildSpec("c", child, Restart.TRANSIENT, reports_started=True))
        assert runs.runs == 1 and sup.children()["c"].state == "restarting"
        await trio.sleep(1.5)  # past the 1 s backoff, not on it: tasks waking at one instant run in any order
        assert runs.runs == 2 and sup.children()["c"].state == "running"
        nursery.cancel_scope.cancel()
