"""What differs between the two builds of `reproducible check`, on purpose.

A build that is only reproducible in the same directory, at the same hour, with the same umask and the
same environment is not reproducible: a rebuild by someone else changes all of these. So the two builds
differ in every one of them that the machine lets us change, and the report lists what was varied.
The clock is varied only by running at different wall times (each build takes minutes) and in different
time zones: faking the clock under gcc and ccache would change what is measured.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Variation:
    label: str
    directory: str
    umask: int
    time_zone: str
    environment_order_seed: int

    def environment(self, base: dict[str, str]) -> dict[str, str]:
        """`base` plus the time zone, with its keys in an order of this variation's own."""
        items = sorted({**base, "TZ": self.time_zone}.items())
        random.Random(self.environment_order_seed).shuffle(items)  # noqa: S311 - an order, not a secret
        return dict(items)

    def describe(self) -> dict[str, str]:
        return {
            "directory": self.directory,
            "umask": f"{self.umask:04o}",
            "time_zone": self.time_zone,
            "environment_order": f"shuffled (seed {self.environment_order_seed})",
        }


FIRST = Variation("a", "a", 0o022, "UTC", 1)
SECOND = Variation("b", "second-build-at-a-longer-path", 0o027, "Pacific/Chatham", 2)
