"""Which captions go into which step, and the learning rate of each step."""

from __future__ import annotations

import math

import torch

from ..config import TrainConfig

_CHUNK_BATCHES = 50


def count_batches(n: int, batch_size: int) -> int:
    """len(epoch_batches(...)) without shuffling: full chunks, then the last partial one."""
    chunk = batch_size * _CHUNK_BATCHES
    return (n // chunk) * _CHUNK_BATCHES + math.ceil((n % chunk) / batch_size)


def epoch_batches(caps: list[tuple[int, list[int]]], batch_size: int, seed: int) -> list[list[int]]:
    """Every caption once, in batches of similar length (little padding, so ~40% less compute
    than random batches on CPU); batch order and membership are shuffled by `seed`."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(caps), generator=g).tolist()
    # Sort by length within chunks of 50 batches: similar lengths, but still random neighbours.
    chunk = batch_size * _CHUNK_BATCHES
    batches = []
    for c in range(0, len(order), chunk):
        part = sorted(order[c : c + chunk], key=lambda i: len(caps[i][1]))
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    perm = torch.randperm(len(batches), generator=g).tolist()
    return [batches[i] for i in perm]


def learning_rate(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Linear warm-up over the first epoch, then cosine decay to 5% (or constant)."""
    warm = steps_per_epoch
    if step < warm:
        return cfg.learning_rate * (step + 1) / warm
    if cfg.lr_schedule == "constant":
        return cfg.learning_rate
    total = max(1, cfg.epochs * steps_per_epoch - warm)
    progress = min(1.0, (step - warm) / total)
    return cfg.learning_rate * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))
