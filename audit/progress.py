"""Step progress on stderr, so machine output on stdout stays clean.

Release work is a sequence of named steps that each take seconds to minutes; an operator watching a
terminal (or a CI log) needs to see which step is running and how long each took.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


class Progress:
    """Numbered steps: `[2/7] sbom ...` then `[2/7] sbom ok (1.2 s)` or `... failed`."""

    def __init__(self, total: int = 0, *, stream: TextIO | None = None, quiet: bool = False) -> None:
        self.total = total
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet

    def note(self, text: str) -> None:
        if not self.quiet:
            print(f"      {text}", file=self.stream, flush=True)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.done += 1
        label = f"[{self.done}/{self.total}] {name}" if self.total else name
        if not self.quiet:
            print(f"{label} ...", file=self.stream, flush=True)
        started = time.monotonic()
        try:
            yield
        except BaseException:
            if not self.quiet:
                print(f"{label} failed ({time.monotonic() - started:.1f} s)", file=self.stream, flush=True)
            raise
        if not self.quiet:
            print(f"{label} ok ({time.monotonic() - started:.1f} s)", file=self.stream, flush=True)
