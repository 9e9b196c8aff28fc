"""`python -m gateway.cli` runs `lora-gateway` (tests and benchmarks start the gateway so)."""

from __future__ import annotations

from gateway.cli import main

# Guarded, as a main module that a `spawn` child (the quality scorers') may import again.
if __name__ == "__main__":
    main()
