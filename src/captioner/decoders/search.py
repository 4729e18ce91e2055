"""Greedy and beam-search decoding, batched over images and deterministic.

Beam search keeps finished hypotheses inside the beam (they extend only with a free <pad>), so
the whole batch moves in lock-step with fixed-size tensors. Candidates are ranked by
log-probability / length**length_penalty (length counts the words plus <end>): with 0 this is the
plain most-probable sequence; larger values favour longer captions. beam_size=1 is greedy.
The repetition guard subtracts `repetition_penalty` from the log-probability of a content word
the hypothesis already holds (an LSTM's classic failure: "a man and a man"). Class guidance
adds `word_bonus` (from what the encoder's ImageNet classifier recognises, e.g. "cat" for a
tabby) to a word's log-probability until the hypothesis holds it. Consensus reranking
(consensus.py) reorders the finished beam by agreement with similar training photos' captions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import DecodeConfig
from ..data.vocab import Vocabulary
from .base import Decoder
from .consensus import NeighbourIndex

NEG_INF = float("-inf")


@torch.inference_mode()
def beam_search(
    model: Decoder,
    features: torch.Tensor,
    beam_size: int = 3,
    max_len: int = 20,
    length_penalty: float = 0.0,
    repetition_penalty: float = 0.0,
    repeatable: torch.Tensor | None = None,
) -> list[list[int]]:
    """Best token sequence (without <start>/<end>) for each row of `features`. `repeatable`:
    a bool per vocabulary id, the words exempt from the repetition guard (needed when
    repetition_penalty > 0)."""
    found = beam_search_nbest(
        model, features, beam_size, max_len, length_penalty, repetition_penalty, repeatable, 1
    )
    return [hyps[0].ids for hyps in found]


@dataclass(frozen=True)
class Hypothesis:
    """One searched caption: token ids (no <start>/<end>) and the model's summed
    log-probability of them plus <end> (without the repetition guard's penalties)."""

    ids: list[int]
    logprob: float

    @property
    def confidence(self) -> float:
        """Geometric mean of the per-token probabilities (words and <end>), in (0, 1]."""
        return math.exp(self.logprob / (len(self.ids) + 1))


@torch.inference_mode()
def beam_search_nbest(
    model: Decoder,
    features: torch.Tensor,
    beam_size: int = 3,
    max_len: int = 20,
    length_penalty: float = 0.0,
    repetition_penalty: float = 0.0,
    repeatable: torch.Tensor | None = None,
    n_best: int = 1,
    word_bonus: torch.Tensor | None = None,
) -> list[list[Hypothesis]]:
    """Up to `n_best` (<= beam_size) finished hypotheses per row of `features`, best first.
    `word_bonus` (rows, vocab): added to each word's log-probability until it is used."""
    if beam_size < 1 or max_len < 1:
        raise ValueError("beam_size and max_len must be at least 1")
    if not 1 <= n_best <= beam_size:
        raise ValueError("n_best must be between 1 and beam_size")
    if repetition_penalty and repeatable is None:
        raise ValueError("repetition_penalty needs the vocabulary's repeatable words")
    model.eval()
    b, k = features.shape[0], beam_size
    pad, start, end, unk = (
        Vocabulary.pad_id,
        Vocabulary.start_id,
        Vocabulary.end_id,
        Vocabulary.unk_id,
    )
    state = model.repeat_state(model.init_state(features), k)
    device = features.device
    tokens = torch.full((b * k,), start, dtype=torch.long, device=device)
    # Only the first beam is live at the start, or the k beams would be k copies of one.
    scores = torch.full((b, k), NEG_INF, device=device)
    scores[:, 0] = 0.0
    raw = torch.zeros(b, k, device=device)  # the model's own log-probability (no guard)
    lengths = torch.zeros(b, k, device=device)
    done = torch.zeros(b, k, dtype=torch.bool, device=device)
    seqs = torch.zeros(b, k, 0, dtype=torch.long, device=device)
    seen = None  # (b*k, vocab) words each hypothesis holds, for the guard and the bonus
    if word_bonus is not None:
        word_bonus = word_bonus.to(device).float().repeat_interleave(k, dim=0)

    for t in range(max_len):
        logp, state = model.step(tokens, state)
        vocab = logp.shape[-1]
        logp[:, [pad, start, unk]] = NEG_INF
        if t == max_len - 1:  # every hypothesis must end within max_len tokens
            ended = logp[:, end].clone()
            logp.fill_(NEG_INF)
            logp[:, end] = ended
        flat_done = done.view(-1)
        logp[flat_done] = NEG_INF
        logp[flat_done, pad] = 0.0
        guarded = logp
        if seen is None and (repetition_penalty or word_bonus is not None):
            seen = torch.zeros(b * k, vocab, dtype=torch.bool, device=device)
        if repetition_penalty:
            blocked = ~repeatable.to(device)
            guarded = guarded - repetition_penalty * (seen & blocked).float()
        if word_bonus is not None:
            guarded = guarded + word_bonus.masked_fill(seen, 0.0)
        cand = (scores.view(-1, 1) + guarded).view(b, k * vocab)
        cand_len = (lengths + (~done).float()).view(-1, 1).expand(-1, vocab).reshape(b, k * vocab)
        norm = cand / cand_len.clamp(min=1) ** length_penalty if length_penalty else cand
        top = norm.topk(k, dim=1).indices  # (b, k), ties broken deterministically
        beam, word = top // vocab, top % vocab
        scores = cand.gather(1, top)
        raw = raw.gather(1, beam) + logp.view(b, k * vocab).gather(1, top)
        lengths = cand_len.gather(1, top)
        done = done.gather(1, beam) | (word == end)
        seqs = torch.cat(
            [seqs.gather(1, beam.unsqueeze(-1).expand(-1, -1, seqs.shape[-1])), word.unsqueeze(-1)],
            dim=-1,
        )
        rows = (beam + torch.arange(b, device=device).unsqueeze(1) * k).view(-1)
        state = model.select_state(state, rows)
        tokens = word.view(-1)
        if seen is not None:
            seen = seen[rows]
            seen[torch.arange(b * k, device=device), tokens] = True
        if bool(done.all()):
            break

    final = scores / lengths.clamp(min=1) ** length_penalty if length_penalty else scores
    final = final.masked_fill(~done, NEG_INF)
    order = final.argsort(dim=1, descending=True, stable=True)
    out = []
    for i in range(b):
        hyps = []
        for j in order[i, :n_best].tolist():
            if not bool(done[i, j]) or final[i, j] == NEG_INF:
                continue
            ids = seqs[i, j].tolist()
            ids = ids[: ids.index(end)] if end in ids else ids
            hyps.append(Hypothesis(ids, float(raw[i, j])))
        out.append(hyps or [Hypothesis([], float("-inf"))])
    return out


def greedy(model: Decoder, features: torch.Tensor, max_len: int = 20) -> list[list[int]]:
    return beam_search(model, features, beam_size=1, max_len=max_len)


def decode_ids(
    model: Decoder,
    vocab: Vocabulary,
    features: torch.Tensor,
    decode: DecodeConfig,
    neighbours: NeighbourIndex | None = None,
) -> list[list[int]]:
    """beam_search with every setting of `decode` (the one call the API and evaluation share)."""
    return [h[0].ids for h in decode_nbest(model, vocab, features, decode, 1, neighbours)]


def decode_nbest(
    model: Decoder,
    vocab: Vocabulary,
    features: torch.Tensor,
    decode: DecodeConfig,
    n_best: int = 1,
    neighbours: NeighbourIndex | None = None,
) -> list[list[Hypothesis]]:
    """The n best hypotheses per image under `decode` (the beam widens to n_best if needed).
    With `neighbours` and decode.rerank_neighbours > 0, the search is guided toward the nearest
    training photos' words (decode.neighbour_guidance) and the whole beam is reranked by
    consensus with their captions before the n best are taken."""
    repeatable = torch.tensor(vocab.repeatable()) if decode.repetition_penalty else None
    width = max(decode.beam_size, n_best)
    rerank = neighbours is not None and decode.rerank_neighbours > 0
    bonus = class_bonus(model, vocab, features, decode.class_guidance)
    if rerank:
        # One neighbour lookup per batch serves the guidance and the reranking.
        near = neighbours.nearest(features, decode.rerank_neighbours)
        uses_presence = decode.neighbour_guidance or decode.rerank_precision
        shares = neighbours.presence(near) if uses_presence else None
        if decode.neighbour_guidance:
            guide = neighbours.word_bonus(shares, decode.neighbour_guidance, vocab)
            guide = guide.to(features.device)
            bonus = guide if bonus is None else bonus + guide
    found = beam_search_nbest(
        model,
        features,
        width,
        decode.max_len,
        decode.length_penalty,
        decode.repetition_penalty,
        repeatable,
        width if rerank else n_best,
        bonus,
    )
    if rerank:
        found = neighbours.rerank(
            found,
            near,
            decode.rerank_weight,
            vocab,
            decode.rerank_precision,
            shares,
        )
        found = [hyps[:n_best] for hyps in found]
    return found


def class_bonus(
    model: Decoder, vocab: Vocabulary, features: torch.Tensor, weight: float
) -> torch.Tensor | None:
    """(N, vocab) log-probability bonus for the words of the classes the model's frozen
    ImageNet head recognises (weight x summed class probability, at most weight); None when
    guidance is off or the model carries no class head."""
    if not weight or not getattr(model.cfg, "num_classes", 0):
        return None
    from ..vision.classes import word_scores

    probs = model.class_probabilities(features)
    return weight * word_scores(probs, vocab.itos).clamp(max=1.0)


def caption_features(
    model: Decoder,
    vocab: Vocabulary,
    features: torch.Tensor,
    decode: DecodeConfig,
    batch: int = 250,
    neighbours: NeighbourIndex | None = None,
) -> list[str]:
    """One caption per row of image features, searched as `decode` says, in batches."""
    device = next(model.parameters()).device
    out: list[str] = []
    for i in range(0, len(features), batch):
        seqs = decode_ids(model, vocab, features[i : i + batch].to(device), decode, neighbours)
        out.extend(vocab.decode(s) for s in seqs)
    return out


def sample(
    model: Decoder,
    features: torch.Tensor,
    n: int,
    max_len: int,
    greedy: bool = False,
    generator: torch.Generator | None = None,
    top_k: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n captions per image drawn from the model (or the greedy one), with gradients, for
    self-critical training. Returns tokens (B*n, L) without <start> (<pad> after <end>), the
    log-probability of each token (B*n, L) and a mask of the positions that count (words and
    the <end>). Rows i*n .. i*n+n-1 belong to image i."""
    pad, start, end, unk = (
        Vocabulary.pad_id,
        Vocabulary.start_id,
        Vocabulary.end_id,
        Vocabulary.unk_id,
    )
    state = model.repeat_state(model.init_state(features), n)
    rows = features.shape[0] * n
    tokens = torch.full((rows,), start, dtype=torch.long, device=features.device)
    done = torch.zeros(rows, dtype=torch.bool, device=features.device)
    seqs, logps, masks = [], [], []
    for t in range(max_len):
        logp, state = model.step(tokens, state)
        logp = logp.clone()
        logp[:, [pad, start, unk]] = NEG_INF
        if t == max_len - 1:  # every caption ends within max_len tokens
            logp[:, :end] = NEG_INF
            logp[:, end + 1 :] = NEG_INF
        if greedy:
            word = logp.argmax(dim=-1)
        elif top_k:
            best = logp.topk(top_k, dim=-1)
            pick = torch.multinomial(best.values.exp(), 1, generator=generator)
            word = best.indices.gather(1, pick).squeeze(1)
        else:
            word = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)
        word = word.masked_fill(done, pad)
        masks.append(~done)
        logps.append(logp.gather(1, word.unsqueeze(1)).squeeze(1).masked_fill(done, 0.0))
        seqs.append(word)
        done = done | (word == end)
        tokens = word
        if bool(done.all()):
            break
    return torch.stack(seqs, 1), torch.stack(logps, 1), torch.stack(masks, 1)
