"""Progress of a huge image segmented block by block, for a person waiting on `predict`: a
first line with its size, blocks and scale, then blocks done, nuclei so far, time spent and
time left. On a terminal one line updated in place; in a log file (not a terminal) a plain
line every 10% of the blocks or every 30 seconds, whichever comes first, and at the end."""

from __future__ import annotations

import time


def duration(seconds: float) -> str:
    """'42 s', '3 min 05 s', '1 h 02 min'."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class SlideProgress:
    """Shows one huge image's blocks on `stream` (predict: stderr) as they are done.

    `name`, `shape` (H, W, ...), `blocks` (how many), `core` (their side in pixels), `scale`
    (the image's one scale for the model) and `unsure` (its size check was unsure) make the
    first line. `live`: update one line in place (default: when `stream` is a terminal).
    `clock`: seconds, for tests."""

    def __init__(self, stream, name: str, shape, blocks: int, core: int, scale: float = 1.0,
                 unsure: bool = False, live: bool | None = None, clock=time.monotonic,
                 share: float = 0.1, seconds: float = 30.0):
        self.stream, self.name, self.blocks, self.clock = stream, name, blocks, clock
        self.live = stream.isatty() if live is None else live
        self.every, self.seconds = max(1, round(blocks * share)), seconds
        self.done, self.nuclei, self.width = 0, 0, 0
        height, width = shape[:2]
        how = f"scale {scale:.2f}" + (" (size check unsure)" if unsure else "")
        self._line(f"{name}: {width} x {height} px, {blocks} blocks of up to {core} px, "
                   f"{how}")
        self.started = self.shown = clock()

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def status(self) -> str:
        elapsed = self.clock() - self.started
        left = (f", about {duration(elapsed / self.done * (self.blocks - self.done))} left"
                if 0 < self.done < self.blocks else "")
        return (f"{self.name}: {self.done}/{self.blocks} blocks, {self.nuclei:,} nuclei, "
                f"{duration(elapsed)}{left}")

    def block_done(self, nuclei: int) -> None:
        """One more block done; `nuclei`: how many the image has so far."""
        self.done, self.nuclei = self.done + 1, nuclei
        now = self.clock()
        if self.live:
            text = self.status()
            self.stream.write("\r" + text.ljust(self.width))
            self.stream.flush()
            self.width = len(text)
            if self.done == self.blocks:
                self.stream.write("\n")
                self.stream.flush()
            return
        if (self.done == self.blocks or self.done % self.every == 0
                or now - self.shown >= self.seconds):
            self._line(self.status())
            self.shown = now

    def finish(self) -> None:
        """End a live line left open (the image stopped before its last block)."""
        if self.live and 0 < self.done < self.blocks:
            self.stream.write("\n")
            self.stream.flush()
