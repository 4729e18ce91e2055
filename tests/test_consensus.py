"""Consensus reranking: CIDEr-D against several images' references, the neighbour index, the
reranked beam, the bundle files that carry the index, and a trained model that uses it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import PHOTOS, TINY

from captioner import Captioner
from captioner.config import DecodeConfig, TrainConfig
from captioner.core.errors import BundleError, ConfigError
from captioner.data.cider import CiderD
from captioner.data.vocab import Vocabulary, tokenize
from captioner.decoders.adjusters import GUIDANCE_FLOOR, neighbour_bonus
from captioner.decoders.base import Hypothesis
from captioner.decoders.neighbours import NeighbourIndex, pooled
from captioner.decoders.rerankers import BREAK_EVEN, ConsensusReranker, expected_matches
from captioner.storage.bundle import load_bundle, save_bundle
from captioner.training.trainer import train

REFS = [
    ["a dog runs across the grass", "a brown dog is running on a lawn"],
    ["a man rides a bike down the street", "a cyclist on a city street"],
    ["two children play in the sand at the beach", "kids dig in the sand"],
    ["a cat sleeps on a sofa", "a ginger cat asleep on the couch", "a cat naps"],
]


def test_consensus_is_the_mean_cider_d_over_the_images():
    cider = CiderD([[tokenize(c) for c in refs] for refs in REFS])
    cands = [tokenize("a dog runs on the grass"), tokenize("a cat on a sofa"), []]
    images = np.array([[0, 1, 3], [3, 2, 0], [1, 1, 2]])
    got = cider.consensus(cands, images)
    want = [cider.score([c] * 3, row).mean() for c, row in zip(cands, images, strict=True)]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert got[0] > 0 and got[1] > 0 and got[2] == 0


def _index(dims: int = 3) -> NeighbourIndex:
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(len(REFS), 8, generator=gen) * 3
    return NeighbourIndex.build(feats, REFS, dims=dims), feats


def test_index_finds_each_photo_itself_first_and_checks_its_shapes():
    index, feats = _index()
    assert index.vectors.shape == (4, 3) and index.vectors.dtype == torch.float16
    near = index.nearest(feats + 0.01, 2)
    assert near.shape == (4, 2) and near[:, 0].tolist() == [0, 1, 2, 3]
    # A grid (N, R, D) is pooled over its regions.
    grid = feats.unsqueeze(1).expand(-1, 5, -1)
    assert torch.allclose(pooled(grid), feats)
    with pytest.raises(ValueError, match="caption sets"):
        NeighbourIndex(index.mean, index.basis, index.vectors, REFS[:3])
    with pytest.raises(ValueError, match="do not fit"):
        NeighbourIndex(index.mean[:4], index.basis, index.vectors, REFS)


def test_rerank_prefers_what_the_neighbours_say_unless_the_model_weighs_more():
    index, feats = _index()
    words = sorted({w for refs in REFS for c in refs for w in tokenize(c)} | {"horse"})
    vocab = Vocabulary(["<pad>", "<start>", "<end>", "<unk>", *words])
    ids = {w: i for i, w in enumerate(vocab.itos)}

    def hyp(text: str, logprob: float) -> Hypothesis:
        return Hypothesis([ids[w] for w in text.split()], logprob)

    # The model prefers the horse; the photo's neighbour (itself) talks about a dog.
    beam = [hyp("a horse runs across the grass", -3.0), hyp("a brown dog runs on a lawn", -6.0)]
    query = feats[:1]
    hood = index.lookup(query, 1, presence=False)
    reranked = ConsensusReranker(hood, vocab, weight=0.0)([beam])[0]
    assert [h.logprob for h in reranked] == [-6.0, -3.0]
    kept = ConsensusReranker(hood, vocab, weight=100.0)([beam])[0]
    assert [h.logprob for h in kept] == [-3.0, -6.0]


def _vocab_and_hyp():
    words = sorted(
        {w for refs in REFS for c in refs for w in tokenize(c)} | {"horse", "front", "of"}
    )
    vocab = Vocabulary(["<pad>", "<start>", "<end>", "<unk>", *words])
    ids = {w: i for i, w in enumerate(vocab.itos)}
    return vocab, lambda text, logprob: Hypothesis([ids[w] for w in text.split()], logprob)


def test_presence_is_the_share_of_neighbours_using_a_word_that_often():
    index, _ = _index()
    (share,) = index.presence(np.array([[0, 2]]))  # the dog photo and the beach photo
    assert share[("the", 1)] == pytest.approx(1.0) and share[("dog", 1)] == pytest.approx(0.5)
    # "a brown dog is running on a lawn" uses "a" twice; the beach captions never use it.
    assert share[("a", 1)] == share[("a", 2)] == pytest.approx(0.5) and ("a", 3) not in share
    assert ("horse", 1) not in share
    # Expected matches: each word earns its presence less BREAK_EVEN.
    got = expected_matches(["a", "dog", "a", "a", "horse"], share)
    assert got == pytest.approx(0.5 + 0.5 + 0.5 + 0.0 + 0.0 - 5 * BREAK_EVEN)


def test_guidance_favours_the_neighbours_words_and_discourages_the_rest():
    index, feats = _index()
    vocab, _ = _vocab_and_hyp()
    bonus = neighbour_bonus(index.lookup(feats[:1] + 0.01, 1, presence=True), 2.0, vocab)
    assert bonus.shape == (1, len(vocab.itos))
    at = {w: float(bonus[0, i]) for i, w in enumerate(vocab.itos)}
    assert at["dog"] == pytest.approx(2.0 * (1 - GUIDANCE_FLOOR))
    assert at["horse"] == pytest.approx(-2.0 * GUIDANCE_FLOOR) == at["cat"] == at["<end>"]


def test_precision_costs_words_the_neighbours_do_not_use():
    index, feats = _index()
    vocab, hyp = _vocab_and_hyp()
    # The model much prefers the longer caption; its tail is no neighbour's word.
    beam = [hyp("a dog runs across the grass in front of a sofa", -1.0), hyp("a dog runs", -2.0)]
    hood = index.lookup(feats[:1], 1, presence=True)
    plain = ConsensusReranker(hood, vocab, weight=100.0)([beam])[0]
    assert [h.logprob for h in plain] == [-1.0, -2.0]
    strict = ConsensusReranker(hood, vocab, weight=100.0, precision=100.0)([beam])[0]
    assert [h.logprob for h in strict] == [-2.0, -1.0]


def test_bundled_model_reranks_and_its_index_travels_in_the_bundle(photo_dir, tmp_path):
    cap = Captioner.load()
    assert cap.bundle.neighbours is not None and cap.decoding.rerank_neighbours > 0
    photo = photo_dir / "chelsea.jpg"
    off = cap.decoding.resolve(rerank_neighbours=0, neighbour_guidance=0, rerank_precision=0)
    width = cap.decoding.beam_size
    # Guidance changes what the beam holds; reranking alone only reorders it.
    on = cap.describe(
        [photo], alternatives=width, decode=cap.decoding.resolve(neighbour_guidance=0)
    )[0]
    plain = cap.describe([photo], alternatives=width, decode=off)[0]
    # Reranking reorders the same beam: the same captions, possibly in another order.
    assert sorted(a.caption for a in on.alternatives) == sorted(
        a.caption for a in plain.alternatives
    )
    assert on.caption == on.alternatives[0].caption

    copy = tmp_path / "m"
    save_bundle(copy, cap.bundle, "card")
    again = load_bundle(copy)
    assert again.neighbours.captions == cap.bundle.neighbours.captions
    assert torch.equal(again.neighbours.vectors, cap.bundle.neighbours.vectors)

    broken = tmp_path / "broken"
    shutil.copytree(copy, broken)
    (broken / "neighbours.json").write_text(json.dumps({"captions": "nope"}))
    with pytest.raises(BundleError, match="neighbours.safetensors: unusable neighbour index"):
        load_bundle(broken)
    (broken / "neighbours.json").unlink()
    with pytest.raises(BundleError, match="neighbours.json is missing"):
        load_bundle(broken)


def test_training_builds_the_index_and_the_model_uses_it(captions_csv, tmp_path, photo_dir):
    settings = {**TINY, "beam_size": 3, "rerank_neighbours": 2}
    settings |= {"rerank_precision": 0.4, "neighbour_guidance": 1.0}
    cfg = TrainConfig(dataset_path=captions_csv, learning_rate=1e-2, epochs=40, **settings)
    out = train(cfg, tmp_path / "run")
    assert {"neighbours.json", "neighbours.safetensors"} <= {p.name for p in out.iterdir()}
    card = (out / "README.md").read_text()
    assert "consensus reranking with 2 neighbours (weight 0.5, precision 0.4, guidance 1.0)" in card
    cap = Captioner.load(out)
    assert cap.decoding.rerank_neighbours == 2 and cap.decoding.neighbour_guidance == 1.0
    assert len(cap.bundle.neighbours.captions) == len(PHOTOS)
    names = sorted(PHOTOS)
    assert cap.caption([photo_dir / f"{n}.jpg" for n in names]) == [PHOTOS[n] for n in names]


def test_rerank_settings_are_checked():
    with pytest.raises(ConfigError, match="rerank_neighbours"):
        DecodeConfig().resolve(rerank_neighbours=-1)
    with pytest.raises(ConfigError, match="rerank_precision"):
        DecodeConfig().resolve(rerank_precision=-0.1)
    with pytest.raises(ConfigError, match="neighbour_guidance"):
        DecodeConfig().resolve(neighbour_guidance=50)
    with pytest.raises(ValueError, match="finetune_encoder"):
        TrainConfig(dataset_path="d", finetune_encoder=True, rerank_neighbours=5)
    # Guidance and precision read the rerank_neighbours photos: never silently off.
    with pytest.raises(ConfigError, match="set rerank_neighbours > 0"):
        DecodeConfig(rerank_neighbours=15, neighbour_guidance=1.0).resolve(rerank_neighbours=0)
    with pytest.raises(ValueError, match="set rerank_neighbours > 0"):
        TrainConfig(dataset_path="d", rerank_precision=0.4)


def test_settings_a_model_cannot_honour_are_refused(captions_csv, tmp_path, photo_dir):
    from captioner.core.errors import ConfigError as Refused

    cfg = TrainConfig(dataset_path=captions_csv, epochs=1, **TINY)
    cap = Captioner.load(train(cfg, tmp_path / "run"))  # no class head, no neighbour index
    photo = photo_dir / "chelsea.jpg"
    with pytest.raises(Refused, match="class_guidance needs a model trained with class evidence"):
        cap.caption([photo], decode=cap.decoding.resolve(class_guidance=1.0))
    with pytest.raises(Refused, match="needs a model that carries a neighbour index"):
        cap.caption([photo], decode=cap.decoding.resolve(rerank_neighbours=5))
    with pytest.raises(ValueError, match="class_guidance needs class_evidence"):
        TrainConfig(dataset_path="d", class_guidance=1.0)
