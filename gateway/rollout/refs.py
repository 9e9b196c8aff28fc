"""A rollout named in an admin path: by its id, or by a route (its active, else latest, one)."""

from __future__ import annotations

from gateway.registry.schema import RolloutRow
from gateway.rollout.manager import RolloutManager

# More digits than a rollout id can have: read as a route name, never as a number that
# would overflow the column.
MAX_ID_DIGITS = 18


async def find_rollout(rollouts: RolloutManager, ref: str) -> RolloutRow:
    """The rollout `ref` names: an id, or a route's active rollout, else its latest one."""
    # isascii: `isdigit` alone accepts digits `int` refuses (`²`).
    if ref.isascii() and ref.isdigit() and len(ref) <= MAX_ID_DIGITS:
        return await rollouts.get(int(ref))
    return (await rollouts.status(ref)).row
