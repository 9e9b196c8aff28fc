"""Webhooks on rollout events: a transactional outbox and an at-least-once delivery worker.

- `events`: the event types and the body subscribers receive (Standard Webhooks' shape).
- `outbox`: messages written in the transaction of the change they announce, and the
  subscriptions (`/admin/hooks`).
- `urls`: which URLs a subscription may name (never the gateway itself).
- `signing`: secrets and the signed headers of each attempt.
- `claims`: leases on due messages, so replicas never send one at the same time, and the
  record of every attempt.
- `delivery`: the worker that sends, retries with back-off and gives up at the deadline.
- `parts`: all of it built from the settings, with its start and stop.
"""
