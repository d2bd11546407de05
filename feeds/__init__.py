"""Market data: the exchanges' public ticker streams, as per-symbol tick channels.

* :mod:`feeds.feed` — :class:`~feeds.feed.Feed`, the feed actor (one per exchange), and
  :func:`~feeds.feed.make_protocol`. Its concerns have modules of their own:
  :mod:`feeds.connection` (the WebSocket and reconnecting, with
  :class:`supervisor.backoff.Backoff`), :mod:`feeds.subscriptions`, :mod:`feeds.delivery` (each parsed
  frame), :mod:`feeds.staleness`, :mod:`feeds.rest_fallback`, :mod:`feeds.suspects`
  (with the quote guard, :mod:`feeds.guard`); :mod:`feeds.stats`,
  :mod:`feeds.failures` and :mod:`supervisor.log_limiter` serve them all.
* :mod:`feeds.tick` — :class:`~feeds.tick.Tick` and the "latest tick wins" channel.
* :mod:`feeds.protocol` — the sans-IO stream protocol interface, with
  :mod:`feeds.parse_results` and :mod:`feeds.fields`; the implementations are
  :mod:`feeds.bybit` and :mod:`feeds.binance`.

Nothing is imported here: the parsers load without trio-websocket and the feed actor.
"""
