"""The simulator's command-line options and the text it prints when it starts.

Shared by ``python -m simulator`` and ``python run.py simulator`` so that both list
the same options. Light on purpose (standard library only): ``run.py`` builds its
parser for every command.
"""

from __future__ import annotations

import argparse
import shlex
import textwrap

from simulator.state import DEFAULT_API_KEYS

# The environment variables config.example.toml names for the keys, per exchange.
KEY_ENV = {
    "bybit": ("BYBIT_API_KEY", "BYBIT_API_SECRET"),
    "binanceusdm": ("BINANCE_API_KEY", "BINANCE_API_SECRET"),
}
CONFIG_NAME = "sim.toml"
SNIPPET_BEGIN = f"# ---- {CONFIG_NAME} (begin) ----"
SNIPPET_END = f"# ---- {CONFIG_NAME} (end) ----"

_DEFAULT_KEYS = ", ".join(f"{k}:{s}" for k, s in DEFAULT_API_KEYS.items())
_DEFAULT_KEY, _DEFAULT_SECRET = next(iter(DEFAULT_API_KEYS.items()))


class HelpFormatter(argparse.HelpFormatter):
    """argparse's, without breaking lines at hyphens (``sim-key`` stays whole)."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return textwrap.fill(" ".join(text.split()), width, initial_indent=indent, subsequent_indent=indent,
                             break_on_hyphens=False)


DESCRIPTION = (
    "A local Bybit v5 linear / Binance USD-M exchange (REST, WebSocket streams, and an admin API under /_sim "
    f"to open positions and move prices) for trying run.py live. It accepts the API key {_DEFAULT_KEY!r} with "
    f"the secret {_DEFAULT_SECRET!r} (--api-key changes that). On start it prints its URLs, the accepted keys, "
    f"the environment variables to export and a ready {CONFIG_NAME} for run.py live --config. Ctrl+C stops it."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8800, help="port (default 8800; 0 = any free port)")
    p.add_argument("--seed", type=int, default=0, help="price path seed (default 0)")
    p.add_argument("--tick-interval", type=float, default=0.25,
                   help="seconds between random-walk price steps (default 0.25; 0 = prices move only "
                        "through the admin API)")
    p.add_argument("--api-key", action="append", metavar="KEY:SECRET",
                   help=f"an API key and its secret the simulator accepts instead of the default "
                        f"(repeatable; default {_DEFAULT_KEYS}); any other key is refused with "
                        f"'API key is invalid'")


def check_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Validate ``args`` (``p.error`` exits 2) and set ``args.api_keys`` (None: the default pair)."""
    if not (0 <= args.port <= 65535):
        p.error("--port must be 0..65535")
    if args.tick_interval < 0:
        p.error("--tick-interval must be >= 0")
    keys = None
    if args.api_key:
        keys = {}
        for item in args.api_key:
            key, sep, secret = item.partition(":")
            if not sep or not key or not secret:
                p.error(f"--api-key wants KEY:SECRET, got {item!r}")
            keys[key] = secret
    args.api_keys = keys
    return args


def startup_text(base_url: str, info: dict, api_keys: dict[str, str]) -> str:
    """What the simulator prints when it is up: URLs, keys, a config for ``run.py live``."""
    key, secret = next(iter(api_keys.items()))
    lines = [
        f"simulator: listening on {base_url} (Bybit v5 linear and Binance USD-M)",
        f"  admin API    {base_url}/_sim   (GET /_sim/info, POST /_sim/positions, POST /_sim/prices, ...)",
    ]
    for name in ("bybit", "binanceusdm"):
        lines.append(f"  {name:<12} REST {info[name]['rest']}   WebSocket {info[name]['ws']}")
    pairs = ", ".join(f"key {k!r} secret {s!r}" for k, s in api_keys.items())
    lines += [
        f"  API keys     {pairs} (any other key: 'API key is invalid')",
        "",
        "To manage the simulator's positions with run.py live, set the keys in your shell:",
        "",
    ]
    for name in ("bybit", "binanceusdm"):
        key_env, secret_env = KEY_ENV[name]
        lines.append(f"export {key_env}={shlex.quote(key)} {secret_env}={shlex.quote(secret)}")
    lines += [
        "",
        f"save the lines between the two '{CONFIG_NAME}' marks below as {CONFIG_NAME}, and run:",
        "",
        f"python run.py live --config {CONFIG_NAME}",
        "",
        SNIPPET_BEGIN, "[manager]", "poll_interval_seconds = 5   # find new positions within 5 s", ""]
    for name in ("bybit", "binanceusdm"):
        key_env, secret_env = KEY_ENV[name]
        lines += [
            "[[exchanges]]",
            f'name = "{name}"',
            f'rest_url = "{info[name]["rest"]}"',
            f'ws_url = "{info[name]["ws"]}"',
            f'private_ws_url = "{info[name]["private_ws"]}"',
            f'api_key_env = "{key_env}"',
            f'api_secret_env = "{secret_env}"',
            "",
        ]
    lines.append(SNIPPET_END)
    return "\n".join(lines)
