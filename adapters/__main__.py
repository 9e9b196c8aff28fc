"""`python -m adapters` runs the pipeline's command line."""

from __future__ import annotations

from adapters.cli import main

main()
