"""Self-critical sequence training (Rennie et al., 2017): after cross-entropy training, the
model samples captions and is rewarded by their CIDEr-D against the image's references, minus a
baseline, so it optimises the metric captions are judged by (and learns from its own mistakes
rather than from teacher-forced prefixes).

Baselines: "greedy" is Rennie et al.'s (the model's own greedy caption); "mean" is the mean
reward of the image's other samples (Luo, 2020). Measured here, the greedy baseline collapses
a label-smoothed model to two-word captions: its samples are far worse than its greedy
caption, so nearly every sample is pushed down and the probability flows to <end>.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..config import TrainConfig
from ..data.cider import CiderD, until_end
from ..data.vocab import Vocabulary, tokenize
from ..decoders.search import sample


class SelfCritical:
    """Rewards for sampled captions. Document frequencies come from the training references
    once (captioner's tokenizer), so a step costs only its own captions."""

    def __init__(
        self, cfg: TrainConfig, vocab: Vocabulary, references: list[tuple[str, ...]]
    ) -> None:
        self.cfg, self.vocab = cfg, vocab
        self.cider = CiderD([[tokenize(c) for c in refs] for refs in references])

    def words(self, seqs: torch.Tensor) -> list[list[str]]:
        ids = until_end(seqs.tolist(), Vocabulary.end_id, Vocabulary.pad_id)
        return [[self.vocab.itos[i] for i in row] for row in ids]

    def loss(
        self,
        model: nn.Module,
        feats: torch.Tensor,
        images: torch.Tensor,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, float]:
        """Policy-gradient loss for one batch of images, and the mean reward of the samples."""
        n, max_len = self.cfg.scst_samples, self.cfg.max_len
        index = images.numpy()
        if self.cfg.scst_baseline == "greedy":
            model.eval()
            with torch.no_grad():
                greedy, _, _ = sample(model, feats, 1, max_len, greedy=True)
            base = np.repeat(self.cider.score(self.words(greedy), index), n)
        model.train()
        seqs, logp, mask = sample(model, feats, n, max_len, generator=generator)
        reward = self.cider.score(self.words(seqs), np.repeat(index, n))
        if self.cfg.scst_baseline == "mean":  # the other samples of the same image
            per_image = reward.reshape(-1, n)
            base = ((per_image.sum(1, keepdims=True) - per_image) / max(1, n - 1)).reshape(-1)
        advantage = torch.from_numpy(reward - base).float().to(logp.device)
        mask = mask.float()
        loss = -(advantage.unsqueeze(1) * logp * mask).sum() / mask.sum()
        return loss, float(reward.mean())


def image_batches(n_images: int, batch_size: int, seed: int) -> list[list[int]]:
    order = torch.randperm(n_images, generator=torch.Generator().manual_seed(seed)).tolist()
    return [order[i : i + batch_size] for i in range(0, n_images, batch_size)]
