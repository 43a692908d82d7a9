"""Imported first by each script: Python may cache the tool's compiled modules even where
PYTHONDONTWRITEBYTECODE=1 is set, as container images commonly do.

Without a cache every run compiles the tool's ~30,000 lines again: an unchanged sync of 2,000 files took
0.24 s instead of 0.15 s (bench/bench_scan.py). Python's own modules and the installed packages come
compiled (pip compiles at install), so in practice only the tool's modules are written, once, into
__pycache__ beside them; where that folder cannot be written Python goes on without a cache, as before.
"""

import sys

sys.dont_write_bytecode = False
