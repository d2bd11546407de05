"""``python -m simulator --host 127.0.0.1 --port 8800 --seed 0``"""

import sys

from simulator.server import main

sys.exit(main())
