"""Progress events. Long work (feature extraction, training, evaluation) reports `Event`s to a
`Reporter` callback; the CLI's progress bars, the web job's event stream and tests all subscribe
to the same events, so no stage prints or knows who is watching.

Phases, in order of a training run: ``data`` (reading the dataset), ``vocab``, ``features``
(images done/total), ``resume`` (only when a checkpoint is resumed: done is the epoch it holds,
metrics ``history`` its lines of metrics.jsonl, the record of the epochs done, which a subscriber
keeping its own history replaces that with), ``train`` (steps done/total of the whole run, with
``epoch``, ``loss`` and ``eta_s`` in metrics), ``dev`` (scoring the dev split), ``epoch`` (an
epoch finished and was checkpointed; metrics is its line of metrics.jsonl), ``save`` and
``done``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Event:
    phase: str
    done: int = 0
    total: int = 0
    metrics: dict = field(default_factory=dict)
    message: str = ""


Reporter = Callable[[Event], None]


class StopTraining(Exception):  # noqa: N818 - a signal, not an error
    """Raised by a reporter to end training after the checkpoint just written (resumable)."""


def silent(event: Event) -> None:
    """The reporter that ignores everything."""


class Throttle:
    """Pass an event on at most every `interval` seconds per phase (first and last always)."""

    def __init__(self, reporter: Reporter, interval: float = 0.5) -> None:
        self.reporter, self.interval = reporter, interval
        self.last: dict[str, float] = {}

    def __call__(self, event: Event) -> None:
        now = time.monotonic()
        final = event.total and event.done >= event.total
        if final or now - self.last.get(event.phase, -1e9) >= self.interval:
            self.last[event.phase] = now
            self.reporter(event)


class ConsoleReporter:
    """tqdm bars for counted phases on stderr, one line per finished epoch on stdout."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.bars: dict[str, object] = {}

    def _bar(self, event: Event, desc: str, unit: str):
        from tqdm import tqdm

        bar = self.bars.get(event.phase)
        if bar is None or bar.total != event.total:
            if bar is not None:
                bar.close()
            bar = tqdm(
                total=event.total, desc=desc, unit=unit, file=self.stream, initial=event.done
            )
            self.bars[event.phase] = bar
        bar.update(event.done - bar.n)
        return bar

    def close(self) -> None:
        """End any open bar (so an error message starts on its own line)."""
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()

    def __enter__(self) -> ConsoleReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __call__(self, event: Event) -> None:
        m = event.metrics
        if (
            event.phase == "features"
            and event.phase not in self.bars
            and event.total
            and event.done >= event.total
        ):
            print(f"{event.message}: {event.total} images", file=self.stream)
        elif event.phase == "features":
            bar = self._bar(event, event.message or "features", "img")
            if event.done >= event.total:
                bar.close()
                self.bars.pop(event.phase, None)
        elif event.phase == "train":
            bar = self._bar(event, "training", "step")
            bar.set_postfix(
                epoch=f"{m.get('epoch')}/{m.get('epochs')}",
                loss=f"{m.get('loss', 0):.3f}",
                refresh=False,
            )
            if event.done >= event.total:
                bar.close()
                self.bars.pop(event.phase, None)
        elif event.phase == "epoch":
            bar = self.bars.get("train")
            best, n = m["best_epoch"], m.get("best_averaged", 1)
            where = f"mean of epochs {best - n + 1}-{best}" if n > 1 else f"epoch {best}"
            text = (
                f"epoch {m['epoch']}: loss {m['loss']:.3f}  dev BLEU-4 {m['dev_BLEU-4']:.3f}"
                f"  CIDEr {m['dev_CIDEr']:.3f}"
                + (
                    f"  mean weights CIDEr {m['mean_dev_CIDEr']:.3f}"
                    if "mean_dev_CIDEr" in m
                    else ""
                )
                + f"  (best CIDEr {m['best_CIDEr']:.3f}, {where})"
            )
            (bar.write if bar is not None else print)(text)
        elif event.message and event.phase != "done":
            bar = self.bars.get("train")
            (bar.write if bar is not None else print)(event.message)
