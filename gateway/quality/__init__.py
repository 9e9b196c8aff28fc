"""Quality signals: response log, scorers, feedback, per-variant aggregates."""
