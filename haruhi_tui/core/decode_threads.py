"""How many CPU threads llama.cpp runs with: chosen by measuring, token by token.

More threads decode faster on an idle machine (Gemma 3 270M on 2 cores: ~35 tokens/s with both, ~22 with
one). But llama.cpp's threads meet at a barrier after every operation of every layer, so when another
program (or a busy UI) takes one of the cores, every barrier waits for the thread that lost its core: on
a 2-core machine under load, two threads decoded 0.2-8 s a token and evaluated prompts at 5-30 tokens/s,
while one thread kept 0.06 s a token and 40-70 tokens/s. No fixed rule is right on both machines, so
the engine measures: it decodes with the count that was fastest lately and now and then tries another
for a few tokens. A try that loses costs time, so the next one waits long enough for tries to cost about
1 % of decoding (a count that stalls is tried again minutes later, one that is a little slower every few
seconds), unless the count in use becomes slower than another one was: then it looks at once. Prompts are
evaluated with the count decoding chose (both suffer from a lost core alike).

What a count costs now is the median of its last few steps, not a running mean: in the chat app two
threads decoded at 16-17 ms a token with a step of 30-90 ms now and then (a repaint, a save, another
program's time slice), and a running mean that such a step pulled up made a 3-token try of one thread
(22 ms) win: the app then decoded a whole reply with one thread, 25 % slower. A step over
:attr:`ThreadChooser.stall` times the usual one is no such hiccup but a stall (another program took a
core and every barrier waits): it counts at once, alone, so the chooser moves after one stalled token.
"""

from __future__ import annotations

import collections
import statistics
from typing import Sequence


def candidate_counts(cores: int) -> tuple[int, ...]:
    """The counts worth trying, most first: every core, and half of them (one of two on a 2-core machine)."""
    cores = max(1, cores)
    return tuple(sorted({cores, max(1, cores // 2)}, reverse=True))


class ThreadChooser:
    """Picks the thread count for the next decode step from the measured time of the recent ones.

    Call :meth:`pick` before each decode step and :meth:`record` with the seconds it took. After
    ``first_probe`` steps, and then whenever the trying budget allows, another count gets ``probe_len``
    steps; a probe step slower than ``give_up`` times the current count's recent time ends the probe at
    once, so a count that stalls costs one slow step. A probe that is faster by ``margin`` wins. A count's
    recent time is the median of its last ``window`` steps, or a single step ``stall`` times slower.
    """

    def __init__(self, counts: Sequence[int], *, first_probe: int = 4, probe_len: int = 3,
                 min_every: int = 16, max_every: int = 50_000, budget: float = 0.01,
                 give_up: float = 1.5, margin: float = 0.95, window: int = 5, stall: float = 10.0) -> None:
        self.counts = tuple(sorted(set(counts), reverse=True)) or (1,)
        self.current = self.counts[0]
        self.seconds: dict[int, float] = {}  # recent seconds per decode step, per count
        self.stall = stall
        self._steps: collections.deque[float] = collections.deque(maxlen=window)  # the current count's
        self.switches = 0
        self.probes = 0
        self.probe_len, self.min_every, self.max_every = probe_len, min_every, max_every
        self.budget, self.give_up, self.margin = budget, give_up, margin
        self._until_probe = first_probe
        self._probe: int | None = None
        self._probe_times: list[float] = []
        self._next_other = 0

    @property
    def fixed(self) -> bool:
        return len(self.counts) == 1

    def pick(self) -> int:
        """The thread count for the next decode step."""
        if self.fixed:
            return self.current
        if self._probe is None and self._until_probe <= 0:
            others = [c for c in self.counts if c != self.current]
            self._probe = others[self._next_other % len(others)]
            self._next_other += 1
            self._probe_times = []
            self.probes += 1
        return self._probe if self._probe is not None else self.current

    def record(self, count: int, seconds: float) -> None:
        """How long a decode step with ``count`` threads took (wall time, everything the step waited on)."""
        if self.fixed or seconds <= 0:
            return
        if count != self._probe:
            usual = self.seconds.get(count)
            if usual is not None and seconds > self.stall * usual:
                recent = seconds  # a stall, not a hiccup: it alone says what this count costs now
                self._steps.clear()
            else:
                self._steps.append(seconds)
                recent = statistics.median(self._steps)
            self.seconds[count] = recent
            self._until_probe -= 1
            if any(t < recent for c, t in self.seconds.items() if c != count):
                self._until_probe = 0  # slower than another count was: the machine changed, look now
            return
        self._probe_times.append(seconds)
        now = self.seconds.get(self.current)
        stalled = now is not None and seconds > self.give_up * now
        if not stalled and len(self._probe_times) < self.probe_len:
            return
        tried = sorted(self._probe_times)[len(self._probe_times) // 2]
        self.seconds[count] = tried
        self._probe = None
        if now is None:
            self._until_probe = self.min_every
            return
        if not stalled and tried < self.margin * now:  # the other count wins; trying the old one again costs
            self.current, self.switches = count, self.switches + 1
            self._steps = collections.deque(self._probe_times, maxlen=self._steps.maxlen)
            lost = (now - tried) * (1 if now > self.give_up * tried else self.probe_len)
            self._wait(lost, tried)
        else:
            self._wait(sum(self._probe_times) - now * len(self._probe_times), now)

    def _wait(self, lost: float, step: float) -> None:
        """Try again once ``lost`` seconds (what a try costs) are ``budget`` of the decoding in between."""
        self._until_probe = int(min(self.max_every, max(self.min_every, lost / (self.budget * step))))
