#!/usr/bin/env python3
"""Aged Position Manager. ``python run.py --help`` lists the commands."""

import signal
import sys

# SIGTERM at any moment, even while starting, stops as cleanly as Ctrl+C.
signal.signal(signal.SIGTERM, signal.default_int_handler)

if __name__ == "__main__":
    try:
        from service.cli import main

        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(0)
