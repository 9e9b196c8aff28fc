"""Shared by every unit test.

The command-line modules build their rich consoles when imported, and a console takes its
width from `COLUMNS` then, if set. pytest-xdist's workers start with `COLUMNS=80`, which would
fix every table at 80 columns whatever a test's runner asks for; without it the consoles
read `COLUMNS` when they print, as they do in a terminal.
"""

from __future__ import annotations

import os

os.environ.pop("COLUMNS", None)
