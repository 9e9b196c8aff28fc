"""Benchmarks of the gateway: added latency over a fake engine, throughput over real vLLM."""
