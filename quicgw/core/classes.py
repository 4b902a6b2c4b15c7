"""Traffic classes: who gets served first, by when, and how much a met deadline is worth."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class TrafficClass:
    """One traffic class.

    ``priority`` 0 is the highest. ``tier`` groups classes for the multi-level scheduler (tier 0
    is served by EDF, lower tiers round-robin). ``reward_weight`` scales the score of a request of
    this class (the poster doubles the reward of high-priority traffic).
    """

    name: str
    priority: int
    deadline_ms: float
    reward_weight: float = 1.0
    tier: int = 0
    urgency: int = 3  # RFC 9218 urgency the gateway gives this class's responses by default
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("traffic class needs a non-empty name")
        if self.priority < 0:
            raise ValueError(f"traffic class {self.name!r}: priority must be >= 0")
        if not self.deadline_ms > 0:
            raise ValueError(f"traffic class {self.name!r}: deadline_ms must be > 0")
        if self.reward_weight < 0:
            raise ValueError(f"traffic class {self.name!r}: reward_weight must be >= 0")
        if not 0 <= self.urgency <= 7:
            raise ValueError(f"traffic class {self.name!r}: urgency must be in 0..7")


# The source poster's three classes (shared/seeds/001). Network experiment: 8 KB / 1 s,
# 8 KB / 2 s, 102.4 KB / 7 s. Routing experiment: 1800 ms for short inputs, 2300 ms for long
# ones, reward doubled for high-priority traffic. The routing deadlines are the defaults here;
# netem's experiment sets its own network deadlines.
REALTIME = TrafficClass(
    "realtime", priority=0, deadline_ms=1800.0, reward_weight=2.0, tier=0, urgency=1,
    description="interactive, short input, high priority",
)
FREE = TrafficClass(
    "free", priority=1, deadline_ms=1800.0, reward_weight=1.0, tier=1, urgency=3,
    description="free tier, short input, low priority",
)
BULK = TrafficClass(
    "bulk", priority=2, deadline_ms=2300.0, reward_weight=1.0, tier=1, urgency=5,
    description="long input, low priority",
)

DEFAULT_CLASSES: tuple[TrafficClass, ...] = (REALTIME, FREE, BULK)


@dataclass(slots=True)
class ClassTable:
    """Classes by name, with the ordering the schedulers and admission queues use."""

    classes: dict[str, TrafficClass] = field(default_factory=dict)

    @classmethod
    def of(cls, classes: tuple[TrafficClass, ...] | list[TrafficClass]) -> ClassTable:
        table = cls()
        for c in classes:
            if c.name in table.classes:
                raise ValueError(f"duplicate traffic class {c.name!r}")
            table.classes[c.name] = c
        return table

    def __getitem__(self, name: str) -> TrafficClass:
        try:
            return self.classes[name]
        except KeyError:
            known = ", ".join(sorted(self.classes)) or "none"
            raise KeyError(f"unknown traffic class {name!r} (known: {known})") from None

    def __contains__(self, name: object) -> bool:
        return name in self.classes

    def __iter__(self):
        return iter(sorted(self.classes.values(), key=lambda c: (c.priority, c.name)))

    def __len__(self) -> int:
        return len(self.classes)

    def index(self, name: str) -> int:
        """Position of the class in priority order (used as a one-hot index by features)."""
        for i, c in enumerate(self):
            if c.name == name:
                return i
        raise KeyError(name)


DEFAULT_CLASS_TABLE = ClassTable.of(DEFAULT_CLASSES)
