"""How long to keep trying a store: exponential backoff with full jitter, bounded by total time."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, bounded by total time."""

    #: Give up (StorageUnavailable) once the next wait would end after this many seconds.
    retry_for_s: float = 15.0
    #: First backoff ceiling; doubles per attempt.
    base_s: float = 0.1
    #: Largest single wait.
    cap_s: float = 2.0


def backoff_delay(attempt: int, policy: RetryPolicy, rng: random.Random) -> float:
    """Seconds to wait before retry number ``attempt + 1``: uniform in [0, min(cap, base·2^n)]."""
    ceiling = min(policy.cap_s, policy.base_s * (2 ** min(attempt, 32)))
    return rng.uniform(0.0, ceiling)

