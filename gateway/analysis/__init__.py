"""Rollout analysis: SLOs, sequential statistics, verdicts and the actions they take."""
