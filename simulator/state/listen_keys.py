"""Binance user-data-stream listen keys: one per API key, valid 60 minutes after the last keep-alive.

The rules are Binance's ("User Data Streams" Connect, developers.binance.com, USD-M
futures): ``POST /fapi/v1/listenKey`` starts a stream, or, if the account already has
an active key, returns that key and extends it for 60 minutes; ``PUT`` extends it for
60 minutes (an unknown or expired key: error -1125 "This listenKey does not exist.");
``DELETE`` closes it. Time is the simulator's clock (:meth:`SimState.now_ms`).
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

LISTEN_KEY_VALIDITY_MS = 60 * 60 * 1000
_ALPHABET = string.ascii_letters + string.digits


@dataclass
class ListenKey:
    key: str
    api_key: str
    expires_at_ms: int


class ListenKeys:
    """The live listen keys (a part of :class:`~simulator.state.SimState`)."""

    def _init_listen_keys(self, seed: int) -> None:
        self._listen_keys: dict[str, ListenKey] = {}  # api key -> its one key
        self._listen_key_rng = random.Random(f"{seed}/listen-keys")

    def _live_key_of(self, api_key: str) -> ListenKey | None:
        lk = self._listen_keys.get(api_key)
        if lk is not None and lk.expires_at_ms <= self.now_ms():
            return None
        return lk

    def open_listen_key(self, api_key: str) -> str:
        """The account's active key, extended by 60 minutes, or a new one."""
        lk = self._live_key_of(api_key)
        if lk is None:
            key = "".join(self._listen_key_rng.choice(_ALPHABET) for _ in range(64))
            lk = self._listen_keys[api_key] = ListenKey(key, api_key, 0)
        lk.expires_at_ms = self.now_ms() + LISTEN_KEY_VALIDITY_MS
        return lk.key

    def keep_listen_key_alive(self, api_key: str, key: str | None = None) -> str | None:
        """Extend the account's active key by 60 minutes; None if there is none (or ``key`` is not it)."""
        lk = self._live_key_of(api_key)
        if lk is None or (key is not None and key != lk.key):
            return None
        lk.expires_at_ms = self.now_ms() + LISTEN_KEY_VALIDITY_MS
        return lk.key

    def close_listen_key(self, api_key: str, key: str | None = None) -> bool:
        lk = self._live_key_of(api_key)
        if lk is None or (key is not None and key != lk.key):
            return False
        del self._listen_keys[api_key]
        return True

    def expire_listen_keys(self, api_key: str | None = None) -> int:
        """Make the active keys (of ``api_key``, or all) expire now (admin fault). Returns how many."""
        now = self.now_ms()
        n = 0
        for lk in self._listen_keys.values():
            if (api_key is None or lk.api_key == api_key) and lk.expires_at_ms > now:
                lk.expires_at_ms = now
                n += 1
        return n

    def listen_key_live(self, key: str) -> bool:
        """True while ``key`` is a key the account may stream with (not expired, not closed)."""
        now = self.now_ms()
        return any(lk.key == key and lk.expires_at_ms > now for lk in self._listen_keys.values())

    def listen_key_known(self, key: str) -> bool:
        """True if ``key`` was handed out and not closed (it may have expired)."""
        return any(lk.key == key for lk in self._listen_keys.values())
