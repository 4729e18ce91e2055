"""CiderD (precomputed df, for SCST rewards) gives pycocoevalcap's CIDEr-D numbers."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FLICKR, needs_flickr
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocoevalcap.cider.cider import Cider

from captioner.core.errors import ScoringError
from captioner.data.cider import CiderD, ngram_counts, until_end
from captioner.data.vocab import tokenize


def reference_cider(refs: list[list[list[str]]], cands: list[list[str]]):
    """pycocoevalcap on the same tokens (it splits on spaces)."""
    gts = {i: [" ".join(r) for r in rs] for i, rs in enumerate(refs)}
    res = {i: [" ".join(c)] for i, c in enumerate(cands)}
    return Cider().compute_score(gts, res)


HAND_REFS = [
    [
        "a dog runs across the grass",
        "a brown dog is running on a lawn",
        "the dog runs in the park",
    ],
    ["a man rides a bike down the street", "a cyclist on a city street"],
    ["two children play in the sand at the beach"],  # a single reference
    [
        "a cat sleeps on a sofa",
        "a ginger cat asleep on the couch",
        "a cat is lying on a sofa",
        "a cat naps",
        "a sleepy cat on a red sofa",
    ],
]
HAND_CANDS = [
    "a dog runs on the grass",
    "a man a man a man on a bike",  # repeats are clipped by the references' counts
    "",  # empty caption: no n-grams, score 0
    "cat",  # one word: no bigrams, length 0
]


def test_hand_written_captions_match_pycocoevalcap():
    refs = [[tokenize(c) for c in rs] for rs in HAND_REFS]
    cands = [tokenize(c) for c in HAND_CANDS]
    mean, scores = CiderD(refs).corpus_score(cands)
    want_mean, want = reference_cider(refs, cands)
    assert scores.shape == (4,)
    np.testing.assert_allclose(scores, want, rtol=0, atol=1e-9)
    assert mean == pytest.approx(want_mean, abs=1e-9)
    assert scores[2] == 0.0 and scores[0] > scores[1] > 0


def test_scores_do_not_depend_on_the_batch():
    """The point of a precomputed df: a caption's reward is the same whatever else is scored
    with it, and several samples may share one image."""
    refs = [[tokenize(c) for c in rs] for rs in HAND_REFS]
    cider = CiderD(refs)
    cands = [tokenize(c) for c in HAND_CANDS]
    _, full = cider.corpus_score(cands)
    np.testing.assert_array_equal(cider.score([cands[1]], [1]), full[[1]])
    twice = cider.score([cands[0], cands[3], cands[0]], np.array([0, 3, 0]))
    np.testing.assert_allclose(twice, full[[0, 3, 0]], rtol=0, atol=1e-12)
    assert cider.score([], []).shape == (0,)


def test_token_ids_score_like_words():
    refs = [[tokenize(c) for c in rs] for rs in HAND_REFS]
    cands = [tokenize(c) for c in HAND_CANDS]
    words = sorted({w for rs in refs for r in rs for w in r} | {w for c in cands for w in c})
    stoi = {w: i + 4 for i, w in enumerate(words)}  # after the 4 special tokens
    ref_ids = [[[stoi[w] for w in r] for r in rs] for rs in refs]
    # Sampled rows as a model returns them: an <end> (2) then pads (0), as numpy arrays.
    rows = [np.array([stoi[w] for w in c] + [2, 0, 0], dtype=np.int64) for c in cands]
    cand_ids = until_end(rows, end_id=2, pad_id=0)
    assert cand_ids[2] == [] and cand_ids[3] == [stoi["cat"]]
    got = CiderD(ref_ids).score(cand_ids, [0, 1, 2, 3])
    np.testing.assert_allclose(got, CiderD(refs).corpus_score(cands)[1], rtol=0, atol=1e-12)


def test_ngram_counts_and_df():
    assert ngram_counts(["a", "b", "a"], 2) == {("a",): 2, ("b",): 1, ("a", "b"): 1, ("b", "a"): 1}
    cider = CiderD([[tokenize(c) for c in rs] for rs in HAND_REFS])
    assert cider.df(["dog"]) == 1 and cider.df(("the", "dog")) == 1  # one image, counted once
    assert cider.df(["a"]) == 3 and cider.df(["on", "a"]) == 3 and cider.df(["zebra"]) == 0
    assert cider.num_images == 4 and cider.num_references == 11


def test_bad_input_is_refused_with_a_reason():
    with pytest.raises(ScoringError, match="at least one"):
        CiderD([])
    with pytest.raises(ScoringError, match="image 1 has no references"):
        CiderD([[["a"]], []])
    cider = CiderD([[["a", "dog"]], [["a", "cat"]]])
    with pytest.raises(ScoringError, match="2 candidates but 1"):
        cider.score([["a"], ["b"]], [0])
    with pytest.raises(ScoringError, match="out of range"):
        cider.score([["a"]], [2])
    with pytest.raises(ScoringError, match="one candidate per image"):
        cider.corpus_score([["a"]])


WORDS = ["a", "the", "dog", "cat", "runs", "on", "grass", "red"]
sentence = st.lists(st.sampled_from(WORDS), max_size=12)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.lists(sentence.filter(bool), min_size=1, max_size=5), sentence),
        min_size=1,
        max_size=6,
    )
)
def test_random_captions_match_pycocoevalcap(images):
    """Small alphabet, so n-grams repeat within and across captions (clipping, df, norms)."""
    refs = [rs for rs, _ in images]
    cands = [c for _, c in images]
    want_mean, want = reference_cider(refs, cands)
    mean, got = CiderD(refs).corpus_score(cands)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    assert mean == pytest.approx(want_mean, abs=1e-9)


def flickr_dev() -> list[list[list[str]]]:
    captions: dict[str, list[str]] = {}
    for line in (FLICKR / "Flickr8k.token.txt").read_text().splitlines():
        key, _, text = line.partition("\t")
        captions.setdefault(key.split("#")[0], []).append(text)
    dev = (FLICKR / "Flickr_8k.devImages.txt").read_text().split()
    return [[tokenize(c) for c in captions[name]] for name in dev if name in captions]


@needs_flickr
def test_flickr8k_dev_corpus_matches_pycocoevalcap():
    """1000 dev images: the first reference is the candidate, the other four the references."""
    images = flickr_dev()
    assert len(images) == 1000
    refs = [caps[1:] for caps in images]
    cands = [caps[0] for caps in images]
    want_mean, want = reference_cider(refs, cands)
    mean, got = CiderD(refs).corpus_score(cands)
    assert np.abs(got - want).max() < 1e-6
    assert abs(mean - want_mean) < 1e-6
    assert 0.5 < mean < 1.2  # human captions score ~0.8 CIDEr-D against each other
