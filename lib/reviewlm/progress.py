"""Progress of a long stage, so that a slow job can be told from a hung one.

The workers and read tasks of a stage add what they finish to a `Tally` (a Ray actor); the
driver reads it every second. On a terminal that is a tqdm bar (Ray Data stages show Ray
Data's own bars there instead); elsewhere (`ray job logs`, CI, a captured console) one plain
line at most every `REVIEWLM_PROGRESS_S` seconds (default 30) and one at the end: done /
total, elapsed time, rate and ETA.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

EVERY_S = 30.0  # plain lines: at most one this often (REVIEWLM_PROGRESS_S overrides)
POLL_S = 1.0
WAIT_S = 10.0  # for the tally's answer, by the driver or a task


@ray.remote(num_cpus=0, max_restarts=0)
class Tally:
    """What a stage's workers and tasks have finished: they add or set values, the driver reads."""

    def __init__(self):
        self.values: dict[str, float] = {}
        self.seen: set[str] = set()

    def add(self, values: dict[str, float], once: str | None = None) -> None:
        """Add `values`; with `once`, only the first time that name is given (a piece read again
        by a later pass, or by a retried task, is counted once)."""
        if once is not None:
            if once in self.seen:
                return
            self.seen.add(once)
        for key, value in values.items():
            self.values[key] = self.values.get(key, 0) + value

    def set(self, values: dict[str, float]) -> None:
        self.values.update(values)

    def get(self) -> dict[str, float]:
        return dict(self.values)


def count(tally, values: dict[str, float], once: str | None = None) -> None:
    """Add `values` to a stage's `tally` (None: no progress kept) and wait until it is counted,
    so that the stage's last line counts every task. Progress never fails a task: a tally that
    is gone (its node lost) is passed over."""
    if tally is None:
        return
    try:
        ray.get(tally.add.remote(values, once=once), timeout=WAIT_S)
    except (ray.exceptions.RayError, TimeoutError):
        pass


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


@dataclass
class Meter:
    """Turns a tally's values, read over time, into progress lines."""

    label: str
    key: str  # the value that counts what is done
    unit: str
    total: float | None = None
    scale: float = 1.0  # shown as value / scale (bytes as MB)
    extra: Callable[[dict, float], str] | None = None  # more to say, from the values and the rate of `key`
    start: float = field(default_factory=time.monotonic)
    _first: tuple[float, float] | None = None  # (time, done) when work was first seen: set-up is not rate
    _most: float = 0  # the most done seen

    def setback(self, values: dict) -> str | None:
        """A line when what is done went back (a stage that restarted from its last checkpoint
        after a failure, as Ray Train does): without it the count would just drop."""
        done = values.get(self.key, 0)
        if done >= self._most:
            self._most = done
            return None
        was, self._most, self._first = self._most, done, None  # the rate starts again
        return (f"  {self.label}: back from {was / self.scale:,.0f} to {done / self.scale:,.0f} {self.unit}: "
                "restarted from the last checkpoint after a failure (Ray's logs say which)")

    def rate(self, values: dict, now: float, final: bool = False) -> tuple[float, float]:
        """What is done, and how fast since work was first seen (from the start, for a stage
        that ended before it was seen)."""
        done = values.get(self.key, 0)
        if self._first is None and done:
            self._first = (now, done) if not final else (self.start, 0)
        t0, d0 = self._first or (now, done)
        return done, (done - d0) / (now - t0) if now > t0 and done > d0 else 0.0

    def line(self, values: dict, now: float, final: bool = False) -> str:
        done, rate = self.rate(values, now, final)
        shown = amount(done / self.scale) + (f"/{amount(self.total / self.scale)}" if self.total else "")
        text = f"  {self.label}: {shown} {self.unit}"
        if self.total and not final:
            text += f" ({100 * done / self.total:.0f}%)"
        text += f" {'in' if final else 'after'} {duration(now - self.start)}"
        if rate:
            per_s = rate / self.scale
            text += f", {per_s:,.1f} {self.unit}/s" if per_s >= 0.1 else f", {per_s:.2g} {self.unit}/s"
        if rate and self.total and not final and done < self.total:
            text += f", ETA {duration((self.total - done) / rate)}"
        if self.extra:
            more = self.extra(values, rate)
            text += f"; {more}" if more else ""
        return text


def amount(value: float) -> str:
    """A count as a whole number; below 10, a fraction to 2 significant digits (a 0.2 MB corpus
    is not "0 MB")."""
    return f"{value:,.0f}" if value >= 10 or value == round(value) else f"{value:.2g}"


@contextmanager
def progress(meter: Meter, *, bar: bool = True, out=None) -> Iterator[object]:
    """A `Tally` for the block's workers to report to, and its progress shown while the block
    runs, ending with one line when it succeeds. `bar=False`: on a terminal, nothing (Ray Data
    shows its own bars there)."""
    out = out or sys.stdout
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    tally = Tally.options(scheduling_strategy=here).remote()  # lives and dies with the driver's node
    tty = out.isatty()
    stop = threading.Event()
    every = float(os.environ.get("REVIEWLM_PROGRESS_S") or EVERY_S)
    watcher = threading.Thread(target=_watch, args=(tally, meter, stop, every, out, tty, bar), daemon=True)
    if bar or not tty:
        watcher.start()
    try:
        yield tally
    except BaseException:
        stop.set()
        raise
    else:
        stop.set()
        if watcher.is_alive():
            watcher.join()
        values = _values(tally)
        if values is not None and (bar or not tty):
            print(meter.line(values, time.monotonic(), final=True), file=out, flush=True)
    finally:
        ray.kill(tally)


def _values(tally) -> dict | None:
    try:
        return ray.get(tally.get.remote(), timeout=WAIT_S)
    except (ray.exceptions.RayError, TimeoutError):
        return None


def _watch(tally, meter: Meter, stop: threading.Event, every: float, out, tty: bool, bar: bool) -> None:
    """Poll the tally every second: a tqdm bar on a terminal, else a line every `every` seconds."""
    shown = None
    if tty:
        from tqdm import tqdm

        shown = tqdm(total=meter.total / meter.scale if meter.total else None, desc=f"  {meter.label}",
                     unit=meter.unit, file=out, leave=False, dynamic_ncols=True)
    last = time.monotonic()
    while not stop.wait(POLL_S):
        values = _values(tally)
        if values is None:
            continue
        now = time.monotonic()
        if (note := meter.setback(values)) is not None:
            (shown.write if shown is not None else partial(print, file=out, flush=True))(note)
        if shown is not None:
            done, rate = meter.rate(values, now)
            shown.update(done / meter.scale - shown.n)
            if meter.extra:
                shown.set_postfix_str(meter.extra(values, rate))
        elif now - last >= every:
            print(meter.line(values, now), file=out, flush=True)
            last = now
    if shown is not None:
        shown.close()
