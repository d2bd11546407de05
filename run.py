#!/usr/bin/env python3
"""Aged Position Manager. ``python run.py --help`` lists the commands."""

import sys

from service.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
