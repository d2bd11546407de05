"""What a supervisor is told, what it reports, and how it gives up.

A :class:`ChildSpec` describes one child: how to start it and when to restart it. A
:class:`ChildState` is a read-only snapshot of how that child is doing. When a
supervisor cannot keep its children alive within its restart intensity, its
:meth:`~supervisor.Supervisor.run` raises :exc:`SupervisorEscalation`, which a parent
supervisor treats like any other crash.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Literal


class Restart(str, Enum):
    """When a child that has ended is started again (OTP's ``restart`` option).

    ``PERMANENT`` children are always restarted, even after a normal return.
    ``TRANSIENT`` children are restarted only if they crashed, that is raised an
    :exc:`Exception`. ``TEMPORARY`` children are never restarted.

    A child that is stopped on purpose (by :meth:`~supervisor.Supervisor.stop_child`,
    or because its supervisor is shutting down) is never restarted, whatever its
    policy.
    """

    PERMANENT = "permanent"
    TRANSIENT = "transient"
    TEMPORARY = "temporary"


@dataclass(frozen=True)
class ChildSpec:
    """How to run one child of a :class:`~supervisor.Supervisor`.

    Args:
      id: Names the child; unique among the live children of its supervisor, for
          example ``"position:42"``.
      start: An async function taking no arguments that *is* the child: the child
          runs for as long as this call runs. Use :func:`functools.partial` to pass
          arguments. Another supervisor's :meth:`~supervisor.Supervisor.run` works
          as is, which is how supervisors nest.
      restart: When to start the child again after it ended; see :class:`Restart`.
      kind: A label for logs and metrics, such as ``"position"`` or ``"feed"``.
      critical: Whether the supervisor counts as unhealthy when this child has
          crashed for good; see :meth:`~supervisor.Supervisor.healthy`.
      reports_started: Whether ``start`` takes a ``task_status`` keyword and calls
          ``task_status.started()`` once it is ready, as a task started with
          :meth:`trio.Nursery.start` does. :meth:`~supervisor.Supervisor.start_child`
          then returns only after that call (or after the first run ended without
          making it). A restarted run is passed :data:`trio.TASK_STATUS_IGNORED`.
    """

    id: str
    start: Callable[..., Awaitable[None]]  # takes task_status= when reports_started
    restart: Restart = Restart.PERMANENT
    kind: str = "worker"
    critical: bool = True
    reports_started: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"child id must be a non-empty string, got {self.id!r}")
        if not callable(self.start):
            raise TypeError(f"child {self.id}: start must be an async function")
        object.__setattr__(self, "restart", Restart(self.restart))


State = Literal["running", "restarting", "stopped", "exited", "crashed"]
"""Where a child is in its life.

``"running"``: its start function is running. ``"restarting"``: it ended and will be
started again once its backoff delay has passed. ``"stopped"``: it was cancelled on
purpose. ``"exited"``: it returned and will not be restarted. ``"crashed"``: it raised
and will not be restarted.
"""


@dataclass(frozen=True)
class ChildState:
    """A snapshot of one child, as returned by :meth:`~supervisor.Supervisor.children`.

    ``restarts`` counts every restart of this child since it was first started;
    ``last_error`` describes the last exception it crashed with (``"ValueError: boom"``),
    or is ``None`` if it never crashed.
    """

    id: str
    state: State
    restarts: int
    kind: str
    critical: bool
    restart: Restart
    last_error: str | None


class SupervisorEscalation(Exception):
    """Raised by :meth:`~supervisor.Supervisor.run` when restart intensity is exceeded.

    By the time it is raised the supervisor has stopped all of its children. A parent
    supervisor running this one as a child sees it as a crash of that child.

    Attributes:
      supervisor: The name of the supervisor that gave up.
      child_id: The child whose restart would have exceeded the intensity.
      error: The exception that child last crashed with, or ``None`` if it returned
          normally (a permanent child that keeps returning).
      restarts: How many restarts fell within ``period``, the refused one included.
      period: The supervisor's intensity period, in seconds.
    """

    def __init__(
        self,
        supervisor: str,
        child_id: str,
        error: BaseException | None,
        *,
        restarts: int,
        period: float,
    ):
        self.supervisor = supervisor
        self.child_id = child_id
        self.error = error
        self.restarts = restarts
        self.period = period
        super().__init__(f"restart intensity exceeded in supervisor {supervisor} (child {child_id}: {describe(error)})")


def describe(error: BaseException | None) -> str:
    """One line naming an exception, such as ``"ValueError: boom"``; fit for a log line."""
    if error is None:
        return "returned normally"
    if isinstance(error, BaseExceptionGroup):
        # trio wraps a child's errors in a group; name what is inside it.
        return f"{type(error).__name__}: [{'; '.join(map(describe, error.exceptions))}]"
    text = str(error).replace("\n", "\\n")
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
