"""Logs and traces: structured request logs and optional OpenTelemetry spans."""
