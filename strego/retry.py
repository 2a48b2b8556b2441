"""Retry delays: how long a failed task waits before its next attempt.

A policy is any callable `(retried, exception, task) -> seconds`, where `retried` is how many
retries the task has had so far (0 after its first failure). `ExponentialBackoff` is the default.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Literal

import attrs

from strego.task import TaskInfo

#: A retry delay policy: (retries so far, the failure, the task) -> seconds until the next attempt.
RetryDelay = Callable[[int, BaseException, TaskInfo], float]


def _positive(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be positive, not {value!r}")


@attrs.frozen
class ExponentialBackoff:
    """Exponential backoff from `base` seconds, never above `cap`, with jitter so that tasks
    that failed together do not retry together.

    - ``"full"``: a uniform draw from [0, min(cap, base * 2**retried)].
    - ``"decorrelated"``: each delay is a uniform draw from [base, previous delay * 3], capped.
      The previous delays are not stored anywhere, so the chain is drawn afresh for each call;
      the delays follow the same distribution as if they had been remembered.
    """

    base: float = attrs.field(default=1.0, validator=_positive)
    cap: float = attrs.field(default=3600.0, validator=_positive)
    jitter: Literal["full", "decorrelated"] = "full"
    rng: random.Random = attrs.field(factory=random.Random, eq=False, repr=False)

    def __call__(self, retried: int, exception: BaseException, task: TaskInfo) -> float:
        retried = max(0, retried)
        if self.jitter == "full":
            # 2**64 is far past any cap; avoids float overflow for very large retry counts
            ceiling = min(self.cap, self.base * 2 ** min(retried, 64))
            return self.rng.uniform(0.0, ceiling)
        delay = self.base
        for _ in range(min(retried, 64) + 1):
            delay = min(self.cap, self.rng.uniform(self.base, delay * 3))
        return delay
