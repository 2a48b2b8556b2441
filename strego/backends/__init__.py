"""Storage backends. `base.Backend` is the contract; `memory` and `redis` implement it."""
