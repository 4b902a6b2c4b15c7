"""Request sizes for benchmark and simulation runs (sans-IO, seeded)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any


def _range(v: Any, name: str) -> tuple[int, int]:
    if isinstance(v, bool):
        raise ValueError(f"workload.{name}: expected an integer or [min, max]")
    if isinstance(v, int):
        lo = hi = v
    elif isinstance(v, list | tuple) and len(v) == 2 and all(isinstance(x, int) for x in v):
        lo, hi = v
    else:
        raise ValueError(f"workload.{name}: expected an integer or [min, max], got {v!r}")
    if lo < 1 or hi < lo:
        raise ValueError(f"workload.{name}: need 1 <= min <= max, got {v!r}")
    return int(lo), int(hi)


@dataclass(frozen=True, slots=True)
class Workload:
    """Input and output token counts, each fixed or uniform on [min, max]."""

    input_tokens: tuple[int, int] = (512, 512)
    output_tokens: tuple[int, int] = (128, 128)

    @classmethod
    def of(cls, d: dict[str, Any]) -> Workload:
        unknown = set(d) - {"input_tokens", "output_tokens"}
        if unknown:
            raise ValueError(f"workload: unknown key {sorted(unknown)[0]!r}")
        return cls(_range(d.get("input_tokens", 512), "input_tokens"),
                   _range(d.get("output_tokens", 128), "output_tokens"))

    @classmethod
    def parse(cls, input_tokens: str, output_tokens: str) -> Workload:
        """From CLI strings ``"512"`` or ``"30-60"``."""
        def one(s: str, name: str) -> tuple[int, int]:
            parts = s.split("-")
            try:
                vals = [int(x) for x in parts]
            except ValueError:
                raise ValueError(f"--{name.replace('_', '-')}: expected N or MIN-MAX, got {s!r}") from None
            return _range(vals[0] if len(vals) == 1 else vals, name)
        return cls(one(input_tokens, "input_tokens"), one(output_tokens, "output_tokens"))

    def sample(self, rng: random.Random) -> tuple[int, int]:
        return (rng.randint(*self.input_tokens), rng.randint(*self.output_tokens))

    @property
    def mean_input(self) -> float:
        return sum(self.input_tokens) / 2

    @property
    def mean_output(self) -> float:
        return sum(self.output_tokens) / 2

    def to_json(self) -> dict[str, Any]:
        def one(r: tuple[int, int]) -> int | list[int]:
            return r[0] if r[0] == r[1] else [r[0], r[1]]
        return {"input_tokens": one(self.input_tokens), "output_tokens": one(self.output_tokens)}

    def describe(self) -> str:
        def one(r: tuple[int, int]) -> str:
            return str(r[0]) if r[0] == r[1] else f"{r[0]}-{r[1]}"
        return f"in={one(self.input_tokens)} out={one(self.output_tokens)} tokens"
