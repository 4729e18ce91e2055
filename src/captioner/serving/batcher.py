"""Captions requests on one worker thread, merging concurrent requests into one batch.

One thread keeps memory flat (no per-thread malloc arenas) and the two cores busy with one
batch at a time; merging waiting requests amortises the encoder and beam search over many
images, which is what keeps latency low when many clients send one photo each.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

from PIL import Image

from ..api import Captioner, Description
from ..config import DecodeConfig


@dataclass
class Request:
    """One HTTP request's images, waiting for captions."""

    captioner: Captioner
    images: list[Image.Image]
    decode: DecodeConfig
    future: asyncio.Future
    alternatives: int = 1  # describe()'s options: requests that differ are never merged
    tags: int = 5

    def fits_with(self, other: Request) -> bool:
        return (
            self.captioner is other.captioner
            and self.decode == other.decode
            and (self.alternatives, self.tags) == (other.alternatives, other.tags)
        )


class Batcher:
    def __init__(self, max_batch: int = 32) -> None:
        self.max_batch = max_batch
        self.queue: list[Request] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._loop, name="captioner-batcher", daemon=True).start()

    async def describe(
        self,
        cap: Captioner,
        images: list[Image.Image],
        decode: DecodeConfig,
        alternatives: int = 1,
        tags: int = 5,
    ) -> list[Description]:
        """`Captioner.describe` for these images, batched with other waiting requests."""
        future = asyncio.get_running_loop().create_future()
        request = Request(cap, images, decode, future, alternatives, tags)
        with self.cond:
            self.queue.append(request)
            self.cond.notify()
        return await request.future

    def _take(self) -> list[Request]:
        """The oldest request plus every waiting one it can share a batch with."""
        with self.cond:
            while not self.queue:
                self.cond.wait()
            first, batch, size = self.queue[0], [], 0
            for item in list(self.queue):
                if item.fits_with(first) and (
                    not batch or size + len(item.images) <= self.max_batch
                ):
                    batch.append(item)
                    size += len(item.images)
                    self.queue.remove(item)
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            first = batch[0]
            try:
                found = first.captioner.describe(
                    [im for r in batch for im in r.images],
                    alternatives=first.alternatives,
                    tags=first.tags,
                    decode=first.decode,
                )
                error = None
            except Exception as exc:  # hand the error to every waiting request
                found, error = [], exc
            start = 0
            for r in batch:
                part = found[start : start + len(r.images)]
                start += len(r.images)
                loop = r.future.get_loop()
                if error is not None:
                    loop.call_soon_threadsafe(_set_exception, r.future, error)
                else:
                    loop.call_soon_threadsafe(_set_result, r.future, part)


def _set_result(future: asyncio.Future, value: object) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
