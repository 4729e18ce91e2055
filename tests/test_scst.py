"""Self-critical training on real captions: it raises the CIDEr-D it optimises, and its rewards
are the metric's own."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import FLICKR, needs_flickr

from captioner import Captioner
from captioner.config import TrainConfig, make_config
from captioner.core.errors import ConfigError
from captioner.data.datasets import load_dataset
from captioner.data.vocab import Vocabulary
from captioner.decoders.search import sample
from captioner.training.scst import SelfCritical, image_batches
from captioner.training.trainer import train
from captioner.vision.features import extract_features


@needs_flickr
@pytest.mark.slow
def test_self_critical_steps_raise_cider_d_on_real_photos():
    """The bundled model, 20 self-critical steps on 320 Flickr8k training photos: the greedy
    captions of those photos score a higher CIDEr-D against their references."""
    torch.manual_seed(0)
    cap = Captioner.load()  # its encoder gives the features its decoder reads (grid or pooled)
    bundle = cap.bundle
    model = bundle.model.float()
    records = load_dataset("flickr8k", FLICKR, "train")[:320]
    feats = torch.from_numpy(
        np.asarray(extract_features([r.image for r in records], cap.encoder), np.float32)
    )
    critic = SelfCritical(
        TrainConfig(dataset_path="d"), bundle.vocab, [r.captions for r in records]
    )
    everyone = np.arange(len(records))

    def greedy_cider() -> float:
        model.eval()
        with torch.no_grad():
            seqs, _, _ = sample(model, feats, 1, 20, greedy=True)
        return float(critic.cider.score(critic.words(seqs), everyone).mean())

    before = greedy_cider()
    opt = torch.optim.Adam(model.parameters(), lr=5e-5)
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        for batch in image_batches(len(records), 32, seed=1):
            images = torch.tensor(batch)
            loss, _ = critic.loss(model, feats[images], images, generator)
            opt.zero_grad()
            loss.backward()
            opt.step()
    after = greedy_cider()
    assert after > before + 0.01, (before, after)


def test_self_critical_epochs_run_after_cross_entropy(captions_csv, tmp_path):
    cfg = TrainConfig(
        dataset_format="captions",
        dataset_path=captions_csv,
        vocab_threshold=1,
        embed_size=32,
        hidden_size=48,
        batch_size=4,
        epochs=2,
        scst_epochs=2,
        scst_batch_size=2,
        device="cpu",
    )
    model = train(cfg, tmp_path / "run")
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["phase"] for x in lines] == ["xe", "xe", "scst", "scst"]
    assert "self-critical" in (model / "README.md").read_text()


def test_rewards_are_cider_d_and_the_mean_baseline_centres_them():
    refs = [("a dog runs on the grass", "a brown dog runs"), ("a man rides a red bike",)]
    vocab = Vocabulary.build([c for r in refs for c in r], threshold=1)
    critic = SelfCritical(TrainConfig(dataset_path="d", scst_samples=2), vocab, refs)
    ids = [vocab.encode("a dog runs on the grass")[1:], vocab.encode("a red bike")[1:]]
    words = critic.words(torch.tensor([ids[0], ids[1] + [0, 0, 0]]))
    assert words == [["a", "dog", "runs", "on", "the", "grass"], ["a", "red", "bike"]]
    scores = critic.cider.score(words, [0, 1])
    assert scores[0] > 1.0 and 0 < scores[1] < scores[0]
    assert np.isclose(critic.cider.score([words[0]], [1])[0], 0.0, atol=0.05)


def test_scst_settings_are_checked():
    with pytest.raises(ConfigError, match="mean baseline needs scst_samples"):
        make_config(dataset_path="d", scst_epochs=1, scst_samples=1)
    with pytest.raises(ConfigError, match="cannot be combined with finetune_encoder"):
        make_config(dataset_path="d", scst_epochs=1, finetune_encoder=True)
    default = make_config(preset="default", dataset_path="d")
    assert (default.decoder, default.class_evidence) == ("attention", True)
