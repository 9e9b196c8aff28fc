"""Background tasks of the gateway's parts (health loops, the registry follower, rollouts)."""
