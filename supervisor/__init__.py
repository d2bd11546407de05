"""Supervision trees for trio: keep child tasks running, with Erlang/OTP semantics.

A :class:`Supervisor` runs each child, described by a :class:`ChildSpec`, as a task in
its own nursery and restarts only the child that ended (``one_for_one``), as its
:class:`Restart` policy says, with exponential backoff. If children need more than
``intensity`` restarts within ``period`` seconds, the supervisor stops them all and
raises :exc:`SupervisorEscalation`. Supervisors nest: a supervisor's
:meth:`~Supervisor.run` can be the ``start`` of a child of another, whose escalation is
then that child's crash.

At the top of a program, run the root supervisor with :func:`run_root`::

    root = Supervisor("root", [ChildSpec("feeds", feeds.run, kind="supervisor")])
    sys.exit(trio.run(run_root, root))

:class:`Backoff` and :func:`retry` (from :mod:`supervisor.backoff`) are the delay
schedule and retry loop that the supervisor's restarts use, shared with everything
else in the service that tries again after a failure. :class:`Observer` (from
:mod:`supervisor.observer`) is how every part of the service, the supervisors first,
tells whoever watches it (metrics, tests) what it does.
"""

from __future__ import annotations

from .backoff import Backoff, Retrying, retry, retry_after_of
from .core import Supervisor
from .observer import NO_OBSERVER, Observer, ObserverSet
from .spec import ChildSpec, ChildState, Restart, State, SupervisorEscalation

__all__ = [
    "Backoff",
    "ChildSpec",
    "ChildState",
    "NO_OBSERVER",
    "Observer",
    "ObserverSet",
    "Restart",
    "Retrying",
    "State",
    "Supervisor",
    "SupervisorEscalation",
    "retry",
    "retry_after_of",
    "run_root",
]


async def run_root(supervisor: Supervisor) -> int:
    """Run the root supervisor of a program; return its exit status.

    Returns 0 once the supervisor has shut down cleanly, that is after
    :meth:`Supervisor.shutdown` (wire your SIGTERM handling to it). If restart intensity
    was exceeded, logs one CRITICAL line::

        service stopping: restart intensity exceeded in supervisor X (child Y: error)

    and returns 1. Cancelling :func:`run_root` from outside cancels the supervisor, and
    :exc:`trio.Cancelled` propagates as usual.
    """
    try:
        await supervisor.run()
    except SupervisorEscalation as exc:
        supervisor.logger.critical("service stopping: %s", exc)
        return 1
    return 0
