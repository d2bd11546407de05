"""A one_for_one supervisor, in the manner of Erlang/OTP, on a trio nursery.

Each child runs as its own task in the supervisor's nursery, inside its own
:class:`trio.CancelScope`, so that one child can be stopped without touching the others.
When a child ends, its :class:`~supervisor.Restart` policy decides whether it is started
again; only that child is restarted (OTP's ``one_for_one`` strategy).

Restarts are paced and bounded:

* **Backoff.** Before the *n*-th consecutive restart of a child the supervisor sleeps
  ``min(backoff_initial * 2 ** (n - 1), backoff_max)`` seconds. A child that has run
  for at least ``period`` seconds before ending counts as having recovered: its next
  restart is consecutive restart number 1 again.

* **Intensity.** If more than ``intensity`` restarts would happen within ``period``
  seconds, counted across all children (OTP's MaxR and MaxT), the supervisor gives up:
  it cancels all its children and :meth:`Supervisor.run` raises
  :exc:`~supervisor.SupervisorEscalation`. A restart counts at the moment the child
  ends, not when the backoff delay is over.

Stopping is not crashing. A child cancelled by :meth:`Supervisor.stop_child`, or
because the supervisor itself is being cancelled, is marked ``"stopped"``; it is
neither restarted nor counted, even if it raised an error on its way out (the error is
logged).

All timing uses trio's clock, so tests can run under
:class:`trio.testing.MockClock`.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from typing import Any

import trio

from .backoff import Backoff
from .observer import NO_OBSERVER, Observer
from .spec import ChildSpec, ChildState, Restart, State, SupervisorEscalation, describe

_LIVE: frozenset[State] = frozenset({"running", "restarting"})


class _Child:
    """The supervisor's private record of one child."""

    def __init__(self, spec: ChildSpec, *, static: bool):
        self.spec = spec
        self.static = static
        self.scope = trio.CancelScope()  # covers every run of the child and its backoff
        self.done = trio.Event()
        self.state: State = "running"
        self.restarts = 0
        self.consecutive = 0
        self.last_error: str | None = None
        self.exit_error: Exception | None = None  # from the run that is ending
        self.stop_requested = False

    def snapshot(self) -> ChildState:
        return ChildState(
            id=self.spec.id,
            state=self.state,
            restarts=self.restarts,
            kind=self.spec.kind,
            critical=self.spec.critical,
            restart=self.spec.restart,
            last_error=self.last_error,
        )


class Supervisor:
    """Keeps a set of child tasks running, restarting them as their policies say.

    Args:
      name: Names this supervisor in logs and in :exc:`SupervisorEscalation`.
      children: The static children, started in order by :meth:`run`. More children
          can be added while it runs, with :meth:`start_child`.
      intensity: How many restarts are allowed within ``period`` seconds; one more
          and the supervisor escalates.
      period: The intensity window, in seconds. It is also how long a child must run
          before its backoff starts again from ``backoff_initial``.
      backoff_initial: The delay before a child's first consecutive restart, in
          seconds; it doubles with each further consecutive restart...
      backoff_max: ...up to this many seconds.
      logger: Where to log; by default the ``"supervisor"`` logger. Each event is
          one line of ``key=value`` pairs starting with ``supervisor=NAME event=EVENT``.
      observer: Told ``child_restarted(spec, count)`` each time a child is to be
          restarted (before its backoff delay), where ``count`` is that child's total
          number of restarts so far (see :mod:`supervisor.observer`). An exception it
          raises is logged and otherwise ignored.

    A supervisor can be run again after :meth:`run` has returned or raised; it then
    starts afresh from its static children, which is what a parent supervisor does
    when it restarts it.
    """

    def __init__(
        self,
        name: str,
        children: Sequence[ChildSpec] = (),
        *,
        intensity: int = 3,
        period: float = 5.0,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        logger: logging.Logger | None = None,
        observer: Observer = NO_OBSERVER,
    ):
        if intensity < 0:
            raise ValueError("intensity must be >= 0")
        if period <= 0:
            raise ValueError("period must be > 0")
        if backoff_initial < 0 or backoff_max < 0:
            raise ValueError("backoff delays must be >= 0")
        ids = [spec.id for spec in children]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"supervisor {name}: duplicate child ids {duplicates}")
        self.name = name
        self.logger = logger or logging.getLogger("supervisor")
        self._specs = tuple(children)
        self._intensity = intensity
        self._period = period
        self._backoff = Backoff.exponential(backoff_initial, max=backoff_max)
        self.observer = observer
        self._children: dict[str, _Child] = {}
        self._restart_times: deque[float] = deque()
        self._nursery: trio.Nursery | None = None
        self._started = trio.Event()  # set while start_child can be used; a new one after each run
        self._scope: trio.CancelScope | None = None
        self._escalation: SupervisorEscalation | None = None
        self._shutdown_requested = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the static children and supervise until cancelled.

        The static children are started in order; then ``task_status.started()`` is
        called, so ``await nursery.start(supervisor.run)`` returns once
        :meth:`start_child` can be used. A supervisor with no children keeps running
        and waits for dynamic ones.

        When cancelled from outside, it stops all its children and lets
        :exc:`trio.Cancelled` propagate as usual. When :meth:`shutdown` is called, it
        stops all its children and returns.

        Raises:
          SupervisorEscalation: if restart intensity was exceeded. All children have
              been stopped by then. If this happens while the static children are
              being started, ``nursery.start(supervisor.run)`` raises it.
          RuntimeError: if this supervisor is already running.
        """
        if self._scope is not None:
            raise RuntimeError(f"supervisor {self.name} is already running")
        self._children = {}
        self._restart_times.clear()
        self._escalation = None
        self._shutdown_requested = False
        try:
            with trio.CancelScope() as self._scope:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    self._started.set()
                    try:
                        for spec in self._specs:
                            # A child that crashed at once may have made us give up already.
                            await trio.lowlevel.checkpoint_if_cancelled()
                            await self._spawn(spec, static=True)
                        self._log(logging.INFO, "started", children=len(self._specs))
                        task_status.started()
                        await trio.sleep_forever()
                    finally:
                        self._nursery = None  # no new children while the others stop
                        self._started = trio.Event()
        finally:
            self._scope = None
            if self._escalation is not None:
                reason = "escalation"
            elif self._shutdown_requested:
                reason = "shutdown"
            else:
                reason = "cancelled"
            self._log(logging.INFO, "shutdown", reason=reason)
        if self._escalation is not None:
            raise self._escalation from self._escalation.error

    def shutdown(self) -> None:
        """Stop all children and make :meth:`run` return normally.

        Like :meth:`trio.CancelScope.cancel`, this does not wait; it does nothing if
        the supervisor is not running.
        """
        if self._scope is not None:
            self._shutdown_requested = True
            self._scope.cancel()

    @property
    def running(self) -> bool:
        """Whether :meth:`start_child` can be used now."""
        return self._nursery is not None

    async def wait_running(self) -> None:
        """Return once :meth:`start_child` can be used (at once if it can now)."""
        while not self.running:
            await self._started.wait()

    async def start_child(self, spec: ChildSpec) -> None:
        """Start a dynamic child and return once it is running.

        A child whose spec ``reports_started`` is running once it has called
        ``task_status.started()``, or once its first run has ended without doing so
        (its restart policy then applies as usual).

        An id that belongs to a child that has ended for good may be used again; the
        new child replaces the old record.

        Raises:
          ValueError: if a child with this id is running or restarting.
          RuntimeError: if the supervisor is not running.
        """
        if self._nursery is None:
            raise RuntimeError(f"supervisor {self.name} is not running")
        if self.has_child(spec.id):
            raise ValueError(f"supervisor {self.name}: child {spec.id} is already running")
        await self._spawn(spec, static=False)

    async def stop_child(self, child_id: str) -> bool:
        """Cancel a child and wait until it has exited.

        A stopped child is not restarted, and stopping it does not count toward the
        restart intensity. Returns ``False`` if no child with this id is running or
        restarting.
        """
        child = self._children.get(child_id)
        if child is None or child.state not in _LIVE:
            return False
        child.stop_requested = True
        child.scope.cancel()
        await child.done.wait()
        return True

    def children(self) -> dict[str, ChildState]:
        """A snapshot of the children, by id.

        Live children are always listed. A child that has ended for good stays listed
        with its final state, except a dynamic child that ended cleanly (returned, or
        was stopped): that one is forgotten, so that a service starting one child per
        position does not grow without bound.
        """
        return {child_id: child.snapshot() for child_id, child in self._children.items()}

    def has_child(self, child_id: str) -> bool:
        """Whether a child with this id is running or waiting to be restarted."""
        child = self._children.get(child_id)
        return child is not None and child.state in _LIVE

    def healthy(self) -> bool:
        """Whether this supervisor is running and none of its critical children is down.

        A critical child is down when it has crashed and will not be restarted. A child
        waiting out its backoff is not down: the supervisor would have escalated if it
        were over its restart intensity. A child that returned or was stopped on
        purpose is not down either.
        """
        if self._scope is None or self._escalation is not None:
            return False
        return not any(child.spec.critical and child.state == "crashed" for child in self._children.values())

    async def _spawn(self, spec: ChildSpec, *, static: bool) -> None:
        assert self._nursery is not None
        child = _Child(spec, static=static)
        self._children[spec.id] = child
        await self._nursery.start(self._supervise, child)

    async def _supervise(self, child: _Child, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        first_run = _StartedOnce(task_status)
        try:
            with child.scope:
                if not child.spec.reports_started:
                    first_run.started()
                await self._keep_running(child, first_run)
        finally:
            self._ended(child)

    async def _keep_running(self, child: _Child, first_run: _StartedOnce) -> None:
        """Run the child, and again after each end its policy restarts, until it ends for good."""
        spec = child.spec
        status: _StartedOnce | None = first_run
        while True:
            child.state = "running"
            started_at = trio.current_time()
            fields: dict[str, Any] = {"child": spec.id, "kind": spec.kind}
            if child.restarts:
                fields["restart"] = child.restarts
            self._log(logging.INFO, "child_started", **fields)

            error = await self._run_once(child, status)
            if status is not None:
                status.started()  # the first run ended before it said so: start_child returns now
                status = None
            # Ending while being cancelled -- by stop_child or from outside -- is a stop,
            # whatever the child raised; self._ended() records it.
            await trio.lowlevel.checkpoint_if_cancelled()
            child.exit_error = None

            if error is None:
                self._log(logging.INFO, "child_exited", child=spec.id, reason="normal")
            else:
                child.last_error = describe(error)
                self._log(
                    logging.WARNING,
                    "child_crashed",
                    exc_info=error if self.logger.isEnabledFor(logging.DEBUG) else None,
                    child=spec.id,
                    error=child.last_error,
                )
            final_state: State = "exited" if error is None else "crashed"
            if not _restarts(spec.restart, error):
                child.state = final_state
                return

            delay = self._schedule_restart(child, error, ran_for=trio.current_time() - started_at)
            if delay is None:
                child.state = final_state
                return
            child.state = "restarting"
            await trio.sleep(delay)

    async def _run_once(self, child: _Child, status: _StartedOnce | None) -> Exception | None:
        """Run the child's start function once; return what it crashed with, or None."""
        child.exit_error = None
        try:
            try:
                if child.spec.reports_started:
                    await child.spec.start(task_status=status or trio.TASK_STATUS_IGNORED)
                else:
                    await child.spec.start()
            except Exception as exc:
                child.exit_error = exc
        except* Exception as group:
            # Only a group mixing errors with trio.Cancelled gets here: the child failed
            # while being cancelled. Keep the errors; the Cancelled part propagates.
            child.exit_error = group
        return child.exit_error

    def _schedule_restart(self, child: _Child, error: BaseException | None, *, ran_for: float) -> float | None:
        """Count a restart of ``child``; return its backoff delay, or None if we escalated."""
        now = trio.current_time()
        while self._restart_times and now - self._restart_times[0] >= self._period:
            self._restart_times.popleft()
        self._restart_times.append(now)
        if len(self._restart_times) > self._intensity:
            self._escalate(child, error)
            return None

        if ran_for >= self._period:
            child.consecutive = 0
        child.consecutive += 1
        child.restarts += 1
        delay = self._backoff.delay(child.consecutive)
        self._log(
            logging.INFO,
            "child_restarting",
            child=child.spec.id,
            restart=child.restarts,
            delay=f"{delay:.3f}s",
        )
        try:
            self.observer.child_restarted(child.spec, child.restarts)
        except Exception as exc:
            self._log(logging.WARNING, "observer_failed", child=child.spec.id, error=describe(exc))
        return delay

    def _escalate(self, child: _Child, error: BaseException | None) -> None:
        self._escalation = SupervisorEscalation(
            self.name,
            child.spec.id,
            error,
            restarts=len(self._restart_times),
            period=self._period,
        )
        self._log(
            logging.ERROR,
            "escalation",
            restarts=len(self._restart_times),
            period=f"{self._period}s",
            child=child.spec.id,
            error=describe(error),
        )
        assert self._scope is not None
        self._scope.cancel()

    def _ended(self, child: _Child) -> None:
        """Record that the child's task is over; it runs however the task ended."""
        if child.state in _LIVE:
            child.state = "stopped"
            fields: dict[str, Any] = {
                "child": child.spec.id,
                "reason": "stop" if child.stop_requested else "shutdown",
            }
            if child.exit_error is not None:
                fields["error"] = describe(child.exit_error)
            self._log(logging.INFO, "child_stopped", **fields)
        child.done.set()
        forget = not child.static and child.state in ("stopped", "exited")
        if forget and self._children.get(child.spec.id) is child:
            del self._children[child.spec.id]

    def _log(self, level: int, event: str, *, exc_info: BaseException | None = None, **fields: object) -> None:
        if not self.logger.isEnabledFor(level):
            return
        pairs = "".join(f" {key}={value}" for key, value in fields.items())
        self.logger.log(level, "supervisor=%s event=%s%s", self.name, event, pairs, exc_info=exc_info)


class _StartedOnce:
    """A ``task_status`` whose :meth:`started` may be called more than once; the first call counts."""

    __slots__ = ("_status", "done")

    def __init__(self, status: trio.TaskStatus[None]):
        self._status = status
        self.done = False

    def started(self, value: None = None) -> None:
        if not self.done:
            self.done = True
            self._status.started(value)


def _restarts(policy: Restart, error: BaseException | None) -> bool:
    if policy is Restart.PERMANENT:
        return True
    if policy is Restart.TRANSIENT:
        return error is not None
    return False
