"""Rollouts of adapter versions: plan, sticky assignment, shadow traffic, the state machine."""
