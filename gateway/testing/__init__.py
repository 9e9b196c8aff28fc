"""Test doubles that ship with the gateway (used by the test suite and the load tests)."""
