"""When the tracker snapshots: step 0, log-spaced steps below ``every_n_steps``, then every
``every_n_steps`` optimizer steps."""
from __future__ import annotations


def snapshot_schedule(step: int, every_n_steps: int, log_spaced: bool) -> bool:
    """0, then (if log_spaced) 1, 2, 4, ... below every_n_steps, then every every_n_steps."""
    if step % every_n_steps == 0:
        return True
    return log_spaced and step < every_n_steps and (step & (step - 1)) == 0


def schedule_points_between(after: int, before: int, every_n_steps: int, log_spaced: bool,
                            limit: int = 5) -> list[int]:
    """The first `limit` schedule steps strictly between `after` and `before` (without
    walking every step in between: the gap may be millions of steps)."""
    found = []
    power = 1
    while log_spaced and power < min(every_n_steps, before) and len(found) < limit:
        if power > after:
            found.append(power)
        power *= 2
    multiple = (after // every_n_steps + 1) * every_n_steps
    while multiple < before and len(found) < limit:
        found.append(multiple)
        multiple += every_n_steps
    return sorted(set(found))[:limit]
