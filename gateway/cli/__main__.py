"""`python -m gateway.cli` runs `lora-gateway` (tests and benchmarks start the gateway so)."""

from __future__ import annotations

from gateway.cli import main

main()
