from __future__ import annotations

import itertools
import math

import pytest
import torch

from captioner.data.vocab import SPECIALS, Vocabulary, tokenize
from captioner.decoders.adjusters import RepetitionGuard, WordBonus
from captioner.decoders.attention import ShowAttendTell
from captioner.decoders.base import DecoderConfig as ModelConfig
from captioner.decoders.registry import build_decoder
from captioner.decoders.search import beam_search, sample
from captioner.decoders.show_and_tell import ShowAndTell

KINDS = ["show_and_tell", "attention"]


def test_tokenize_lowercases_and_drops_punctuation():
    assert tokenize("A dog's ball, RED!  Two-tone.") == ["a", "dog's", "ball", "red", "two", "tone"]


def test_vocabulary_threshold_and_round_trip():
    caps = ["A dog runs.", "a dog sits", "A cat sits on a mat"]
    v = Vocabulary.build(caps, threshold=2)
    assert v.itos[: len(SPECIALS)] == list(SPECIALS)
    assert set(v.itos[len(SPECIALS) :]) == {"a", "dog", "sits"}
    ids = v.encode("A dog flies")
    assert ids[0] == v.start_id and ids[-1] == v.end_id and v.unk_id in ids
    assert v.decode(v.encode("a dog sits")) == "a dog sits"
    assert v.decode([v.start_id, v.stoi["dog"], v.end_id, v.stoi["a"]]) == "dog"
    again = Vocabulary.from_json(v.to_json())
    assert again.itos == v.itos
    with pytest.raises(ValueError):
        Vocabulary.from_json({"words": ["a", "b"]})


def test_model_shapes():
    cfg = ModelConfig(feature_dim=32, vocab_size=50, embed_size=16, hidden_size=24, num_layers=2)
    m = ShowAndTell(cfg)
    logits = m(torch.randn(3, 32), torch.randint(0, 50, (3, 7)))
    assert logits.shape == (3, 7, 50)
    state = m.init_state(torch.randn(3, 32))
    assert state[0].shape == (2, 3, 24)
    logp, _ = m.step(torch.tensor([1, 1, 1]), state)
    assert logp.shape == (3, 50) and torch.allclose(logp.exp().sum(-1), torch.ones(3))


def test_attention_shapes_and_weights():
    cfg = ModelConfig(
        kind="attention",
        feature_dim=32,
        vocab_size=50,
        embed_size=16,
        hidden_size=24,
        attention_size=12,
        num_classes=10,
        dropout=0.0,
    )
    m = ShowAttendTell(cfg)
    m.set_class_head(torch.randn(10, 32), torch.zeros(10))
    grid = torch.randn(3, 5, 32)
    assert m(grid, torch.randint(0, 50, (3, 7))).shape == (3, 7, 50)
    h, c, values, keys = m.init_state(grid)
    # 5 regions plus one for the class evidence; hidden and attention sizes as configured.
    assert values.shape == (3, 6, 24) and keys.shape == (3, 6, 12) and h.shape == (3, 24)
    probs = m.class_probabilities(grid)
    assert probs.shape == (3, 10) and torch.allclose(probs.sum(-1), torch.ones(3))
    logp, state = m.step(torch.tensor([1, 1, 1]), (h, c, values, keys))
    assert logp.shape == (3, 50) and torch.allclose(logp.exp().sum(-1), torch.ones(3))
    # The attention looks at the image: other regions give other next-word distributions,
    # and the order of the regions does not matter (attention is a weighted sum).
    other, _ = m.step(torch.tensor([1, 1, 1]), m.init_state(torch.randn(3, 5, 32)))
    assert not torch.allclose(logp, other)
    shuffled, _ = m.step(torch.tensor([1, 1, 1]), m.init_state(grid[:, [4, 2, 0, 1, 3]]))
    assert torch.allclose(logp, shuffled, atol=1e-5)
    # The frozen ImageNet head is saved with the decoder but never trained.
    assert {"class_weight", "class_bias"} <= set(m.state_dict())
    assert all(n not in ("class_weight", "class_bias") for n, _ in m.named_parameters())


def _tiny_model(seed: int, kind: str = "show_and_tell"):
    torch.manual_seed(seed)
    m = build_decoder(
        ModelConfig(
            kind=kind,
            feature_dim=8,
            vocab_size=7,
            embed_size=6,
            hidden_size=6,
            attention_size=5,
            dropout=0.0,
        )
    ).eval()
    with torch.no_grad():  # sharpen the output so sequences differ clearly in probability
        m.out.weight.mul_(4)
    return m


def _features(kind: str, n: int, seed: int) -> torch.Tensor:
    shape = (n, 3, 8) if kind == "attention" else (n, 8)  # 3 regions for the attention decoder
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _ranked(m, feat, max_len, alpha, penalty=0.0, repeatable=None, bonus=None):
    """Every sequence of up to max_len tokens (words then <end>), scored the way beam search
    ranks them (repetition penalty and word bonus included), best first, as
    (ranking score, words, the model's own log-probability)."""
    words = list(range(len(SPECIALS), 7))
    out = []
    for n in range(0, max_len):
        for seq in itertools.product(words, repeat=n):
            tokens = [Vocabulary.start_id, *seq]
            state = m.init_state(feat)
            total, guided = 0.0, 0.0
            for i, tok in enumerate(tokens):
                logp, state = m.step(torch.tensor([tok]), state)
                nxt = seq[i] if i < len(seq) else Vocabulary.end_id
                total += float(logp[0, nxt])
                guided += float(logp[0, nxt])
                if nxt in seq[:i]:
                    guided -= penalty * (penalty > 0 and not repeatable[nxt])
                elif bonus is not None:
                    guided += float(bonus[nxt])
            norm = guided / (len(seq) + 1) ** alpha if alpha else guided
            out.append((norm, list(seq), total))
    return sorted(out, key=lambda r: -r[0])


def _best(m, feats: torch.Tensor, **search) -> list[list[int]]:
    """The best caption's ids per image."""
    return [hyps[0].ids for hyps in beam_search(m, feats, **search)]


def _exhaustive(m, feat: torch.Tensor, max_len: int, alpha: float):
    return _ranked(m, feat, max_len, alpha)[0][1]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("alpha", [0.0, 0.7])
def test_beam_search_matches_exhaustive_search(alpha, kind):
    max_len = 4  # up to 3 words + <end>: 3**0 + ... + 3**3 = 40 sequences
    checked_greedy_differs = False
    for seed in range(12):
        m = _tiny_model(seed, kind)
        feats = _features(kind, 3, seed)
        # A beam wide enough to hold every prefix is exact search, batched over 3 images.
        wide = _best(m, feats, beam_size=27, max_len=max_len, length_penalty=alpha)
        narrow = _best(m, feats, beam_size=1, max_len=max_len)
        with torch.no_grad():
            for i in range(3):
                best = _exhaustive(m, feats[i : i + 1], max_len, alpha)
                assert wide[i] == best
                checked_greedy_differs |= narrow[i] != best
    assert checked_greedy_differs, "test would not catch a beam search that is only greedy"


@pytest.mark.parametrize("kind", KINDS)
@torch.no_grad()
def test_nbest_guard_and_bonus_match_exhaustive_search(kind):
    """The n best of a beam wide enough for exact search are the exhaustive top n, with the
    model's own log-probability and confidence, under the repetition guard and a word bonus."""
    max_len = 4
    repeatable = torch.tensor([True] * 4 + [True, False, False])  # word 4 may repeat
    best = {}  # (setting, seed, image) -> the 3 best
    for seed in range(6):
        m = _tiny_model(seed, kind)
        feats = _features(kind, 2, seed)
        bonus = torch.zeros(2, 7)
        bonus[:, 6] = 1.5  # as if the classifier saw what word 6 names
        for penalty, word_bonus in ((0.0, None), (3.0, None), (0.0, bonus), (3.0, bonus)):
            steps = [RepetitionGuard(penalty, repeatable)] if penalty else []
            steps += [WordBonus(word_bonus)] if word_bonus is not None else []
            found = beam_search(
                m,
                feats,
                beam_size=27,
                max_len=max_len,
                length_penalty=0.7,
                n_best=3,
                adjusters=steps,
            )
            for i in range(2):
                want = _ranked(
                    m,
                    feats[i : i + 1],
                    max_len,
                    0.7,
                    penalty,
                    repeatable,
                    None if word_bonus is None else word_bonus[i],
                )[:3]
                assert [h.ids for h in found[i]] == [w for _, w, _ in want]
                for h, (_, _, total) in zip(found[i], want, strict=True):
                    assert h.logprob == pytest.approx(total, abs=1e-4)
                    assert h.confidence == pytest.approx(math.exp(total / (len(h.ids) + 1)))
                    assert 0 < h.confidence <= 1
                best[penalty, word_bonus is None, seed, i] = [h.ids for h in found[i]]
    # The guard and the bonus each really change some rankings.
    plain = {k[2:]: v for k, v in best.items() if k[:2] == (0.0, True)}
    assert any(v != plain[k[2:]] for k, v in best.items() if k[:2] == (3.0, True))
    assert any(v != plain[k[2:]] for k, v in best.items() if k[:2] == (0.0, False))


@pytest.mark.parametrize("kind", KINDS)
def test_decoding_is_deterministic_and_batch_independent(kind):
    m = _tiny_model(0, kind)
    feats = _features(kind, 5, 1)
    a = _best(m, feats, beam_size=3, max_len=6)
    b = _best(m, feats, beam_size=3, max_len=6)
    one_by_one = [_best(m, feats[i : i + 1], beam_size=3, max_len=6)[0] for i in range(5)]
    assert a == b == one_by_one
    assert all(len(s) <= 6 and Vocabulary.end_id not in s for s in a)


@pytest.mark.parametrize("kind", KINDS)
def test_sampling_for_self_critical_training(kind):
    m = _tiny_model(3, kind)
    feats = _features(kind, 4, 2)
    seqs, logp, mask = sample(m, feats, 3, max_len=5, generator=torch.Generator().manual_seed(0))
    assert seqs.shape[0] == 12 and seqs.shape == logp.shape == mask.shape
    for row, lp, mk in zip(seqs.tolist(), logp, mask, strict=True):
        ends = [i for i, t in enumerate(row) if t == Vocabulary.end_id]
        assert ends, "every sample ends within max_len"
        first = ends[0]
        assert all(t == Vocabulary.pad_id for t in row[first + 1 :])  # <pad> after <end>
        assert mk[: first + 1].all() and not mk[first + 1 :].any()  # words and <end> count
        assert (lp[: first + 1] < 0).all() and (lp[first + 1 :] == 0).all()
    assert logp.requires_grad  # the policy gradient flows through it
    # Greedy sampling is beam search with one beam.
    best, _, _ = sample(m, feats, 1, max_len=5, greedy=True)
    rows = [r[: r.index(Vocabulary.end_id)] for r in best.tolist()]
    assert rows == _best(m, feats, beam_size=1, max_len=5)


@pytest.mark.parametrize("kind", KINDS)
@torch.no_grad()
def test_constrained_search_holds_a_required_word_and_is_exact_when_wide(kind):
    """A wide enough constrained search finds the best sequence holding a required word (the
    exhaustive answer among those), and a row that requires nothing is searched as before."""
    max_len = 4
    changed = False
    for seed in range(6):
        m = _tiny_model(seed, kind)
        feats = _features(kind, 3, seed)
        plain = _best(m, feats, beam_size=27, max_len=max_len, length_penalty=0.7)
        required = torch.zeros(3, 7, dtype=torch.bool)
        required[0, 6] = True  # image 0 must say word 6; image 1 word 4 or 5; image 2 free
        required[1, [4, 5]] = True
        got = _best(m, feats, beam_size=27, max_len=max_len, length_penalty=0.7, required=required)
        for i, words in ((0, {6}), (1, {4, 5})):
            ranked = _ranked(m, feats[i : i + 1], max_len, 0.7)
            want = next(seq for _, seq, _ in ranked if words & set(seq))
            assert got[i] == want and words & set(got[i])
            changed |= got[i] != plain[i]
        assert got[2] == plain[2]
        # A narrow beam too: every answer holds a required word (the satisfied bank starts
        # with fewer live hypotheses than beams; the rest must stay dead, not leak in).
        narrow = beam_search(m, feats, beam_size=5, max_len=max_len, n_best=5, required=required)
        for i, words in ((0, {6}), (1, {4, 5})):
            assert narrow[i] and all(words & set(h.ids) for h in narrow[i])
    assert changed, "the constraint never changed a caption: the test would not catch a no-op"


@pytest.mark.parametrize("kind", KINDS)
def test_constrained_search_without_a_constraint_equals_plain_search(kind):
    m = _tiny_model(1, kind)
    feats = _features(kind, 4, 2)
    nothing = torch.zeros(4, 7, dtype=torch.bool)
    for k in (1, 3):
        plain = beam_search(m, feats, beam_size=k, max_len=6, n_best=k)
        free = beam_search(m, feats, beam_size=k, max_len=6, n_best=k, required=nothing)
        assert [[h.ids for h in r] for r in free] == [[h.ids for h in r] for r in plain]
