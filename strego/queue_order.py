"""The order a server asks for its queues in, per fetch: round-robin over a list, weighted random
over a mapping of weights, or strict priority."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from strego.task import validate_queue_name

#: Queues a server consumes: one name, a list (round-robin), or a mapping name -> weight.
QueuesSpec = str | Sequence[str] | Mapping[str, float]


class QueueOrder:
    """Gives, for each fetch, the queues in the order the backend should try them (a later queue
    is used only when the earlier ones have nothing pending).

    - a list: round-robin, each fetch starts one queue further on;
    - a mapping of weights: a weighted random order per fetch, so over many fetches a queue comes
      first in proportion to its weight;
    - `strict=True`: always the same order (the list's order, or by weight, highest first), so a
      lower queue runs only when every higher one is empty.
    """

    def __init__(
        self, queues: QueuesSpec, *, strict: bool = False, rng: random.Random | None = None
    ) -> None:
        if isinstance(queues, str):
            queues = [queues]
        if isinstance(queues, Mapping):
            names = list(queues)
            given: list[float] = []
            for name, weight in queues.items():
                if isinstance(weight, bool) or not isinstance(weight, int | float) or weight <= 0:
                    raise ValueError(f"weight of queue {name!r} must be a positive number")
                given.append(float(weight))
            weights: list[float] | None = given
        else:
            names, weights = list(queues), None
        if not names:
            raise ValueError("a server needs at least one queue")
        for name in names:
            validate_queue_name(name)
        if len(set(names)) != len(names):
            raise ValueError(f"queues listed twice: {names}")
        self.names: tuple[str, ...] = tuple(names)
        self.weights = None if weights is None else tuple(weights)
        self.strict = strict
        self._rng = rng or random.Random()
        self._turn = 0
        if strict and self.weights is not None:
            ranked = sorted(zip(self.weights, range(len(names)), strict=True), key=lambda p: -p[0])
            self._strict_order = [self.names[i] for _, i in ranked]
        else:
            self._strict_order = list(self.names)

    def next(self) -> list[str]:
        if self.strict or len(self.names) == 1:
            return list(self._strict_order)
        if self.weights is not None:
            # Efraimidis-Spirakis: sorting by u ** (1 / w) is weighted sampling without replacement
            keys = [self._rng.random() ** (1.0 / w) for w in self.weights]
            return [name for _, name in sorted(zip(keys, self.names, strict=True), reverse=True)]
        start = self._turn % len(self.names)
        self._turn += 1
        return list(self.names[start:] + self.names[:start])
