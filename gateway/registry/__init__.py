"""The adapter registry: adapters, their numbered versions and an audit trail, in SQL."""
