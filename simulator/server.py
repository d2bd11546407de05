"""Run the simulator: one loopback port, hypercorn (trio worker) + starlette.

In code (tests, the demo, benchmarks)::

    async with trio.open_nursery() as nursery:
        sim = await nursery.start(serve_simulator)          # port 0: an ephemeral port
        sim.base_url, sim.admin_url, sim.info(), sim.state  # ...
        nursery.cancel_scope.cancel()                       # stops it

From the command line: ``python -m simulator --port 8800 --seed 0`` (or
``python run.py simulator ...``, which calls :func:`main`).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from dataclasses import dataclass, field
from functools import partial

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from simulator.admin import info_for
from simulator.app import build_app
from simulator.options import DESCRIPTION, HelpFormatter, add_arguments, check_arguments, startup_text
from simulator.state import SimState

log = logging.getLogger(__name__)

# Longer than any client's idle keep-alive (aiohttp keeps idle connections 15 s): a
# server that closes first races the client's reuse and surfaces as a spurious
# "server disconnected" network error on the next call.
KEEP_ALIVE_TIMEOUT_S = 75.0


@dataclass
class SimulatorHandle:
    state: SimState
    base_url: str  # "http://127.0.0.1:PORT"
    admin_url: str  # base_url + "/_sim"
    hub: object | None = field(default=None, repr=False)  # simulator.streams.StreamHub

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    def info(self) -> dict:
        """Same as ``GET /_sim/info``."""
        return info_for(self.base_url)


def _hypercorn_config(host: str, port: int) -> Config:
    config = Config()
    bind_host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    config.bind = [f"{bind_host}:{port}"]
    config.accesslog = None
    config.loglevel = "WARNING"
    config.keep_alive_timeout = KEEP_ALIVE_TIMEOUT_S
    config.graceful_timeout = 1.0
    return config


async def _walk(state: SimState, interval: float) -> None:
    """Step the random walk every ``interval`` seconds (fixed rate, no drift)."""
    deadline = trio.current_time()
    while True:
        deadline += interval
        now = trio.current_time()
        if deadline < now:  # fell behind (a stalled loop): skip, don't burst
            deadline = now + interval
        await trio.sleep_until(deadline)
        state.step_prices()


async def serve_simulator(
    host: str = "127.0.0.1",
    port: int = 0,
    seed: int = 0,
    *,
    tick_interval: float | None = 0.25,
    state: SimState | None = None,
    api_keys: dict[str, str] | None = None,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the simulator until cancelled.

    Binds ``host:port`` (port 0 = ephemeral), starts the price random walk (every
    ``tick_interval`` seconds; ``None`` or 0 = no automatic steps, use
    ``state.step_prices()`` or ``POST /_sim/step``), then reports a
    :class:`SimulatorHandle` through ``task_status``. ``state`` may be given (else
    ``SimState(seed, api_keys=api_keys)``).
    """
    if state is None:
        state = SimState(seed, api_keys=api_keys)
    app, hub = build_app(state)
    config = _hypercorn_config(host, port)
    try:
        async with trio.open_nursery() as nursery:

            async def run_server(task_status=trio.TASK_STATUS_IGNORED) -> None:
                await hypercorn_serve(app, config, task_status=task_status)
                # hypercorn returns (rather than raising) when it swallows a
                # KeyboardInterrupt: stop the price walk with it
                nursery.cancel_scope.cancel()

            binds = await nursery.start(run_server)
            base_url = next(b for b in binds if b.startswith("http://"))
            if tick_interval:
                nursery.start_soon(_walk, state, tick_interval)
            handle = SimulatorHandle(state=state, base_url=base_url, admin_url=base_url + "/_sim", hub=hub)
            log.info("simulator listening on %s", base_url)
            task_status.started(handle)
    except BaseExceptionGroup as group:
        # a bind failure arrives wrapped in three nursery groups: raise it plain
        leaf = _single_leaf(group)
        if isinstance(leaf, OSError):
            raise leaf from None
        raise
    finally:
        close = getattr(hub, "close", None)
        if close is not None:
            close()


def _single_leaf(group: BaseExceptionGroup) -> BaseException | None:
    leaves: list[BaseException] = []

    def walk(e: BaseException) -> None:
        if isinstance(e, BaseExceptionGroup):
            for sub in e.exceptions:
                walk(sub)
        else:
            leaves.append(e)

    walk(group)
    return leaves[0] if len(leaves) == 1 else None


def banner(handle: SimulatorHandle) -> str:
    """The URLs, the accepted keys and a ready ``run.py live`` configuration."""
    return startup_text(handle.base_url, handle.info(), handle.state.api_keys)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="simulator", description=DESCRIPTION, formatter_class=HelpFormatter)
    add_arguments(p)
    return check_arguments(p, p.parse_args(argv))


async def _cli(args: argparse.Namespace) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(
                partial(
                    serve_simulator,
                    args.host,
                    args.port,
                    args.seed,
                    tick_interval=args.tick_interval or None,
                    api_keys=args.api_keys,
                )
            )
            print(banner(handle), flush=True)
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    """``simulator --host H --port N --seed S``: serve until Ctrl+C / SIGTERM, exit 0."""
    return run(_parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Serve with checked options (:func:`simulator.options.check_arguments`) until Ctrl+C / SIGTERM."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        trio.run(_cli, args)
    except KeyboardInterrupt:
        pass
    except BaseExceptionGroup as group:
        leaf = _single_leaf(group)
        if isinstance(leaf, KeyboardInterrupt):
            return 0
        if not isinstance(leaf, OSError):
            raise
        print(f"simulator: cannot serve on {args.host}:{args.port}: {leaf}", file=sys.stderr)
        return 1
    except OSError as e:  # e.g. the port is taken
        print(f"simulator: cannot serve on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
