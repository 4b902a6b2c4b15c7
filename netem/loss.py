"""Packet loss models (sans-IO, seeded, deterministic): Bernoulli and Gilbert-Elliott."""

from __future__ import annotations

import random

from netem.profiles import LossSpec


class LossModel:
    """Decides, packet by packet, whether the link loses it."""

    def __init__(self, spec: LossSpec, seed: int = 0) -> None:
        self.spec = spec
        self._rng = random.Random(seed)
        self.bad = False  # Gilbert-Elliott state
        self.decisions = 0
        self.losses = 0

    def lose(self) -> bool:
        spec = self.spec
        self.decisions += 1
        if spec.kind == "none":
            return False
        rnd = self._rng.random
        if spec.kind == "bernoulli":
            lost = rnd() < spec.p
        else:
            # Gilbert-Elliott as netem's gemodel: first the state transition, then the loss
            # draw in the (new) state.
            if self.bad:
                if rnd() < spec.r:
                    self.bad = False
            elif rnd() < spec.p:
                self.bad = True
            lost = rnd() < (spec.loss_bad if self.bad else spec.loss_good)
        if lost:
            self.losses += 1
        return lost
