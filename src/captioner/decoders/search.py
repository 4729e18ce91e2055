"""The search loop (beam search, batched over images and deterministic) and sampling.

Beam search keeps finished hypotheses inside the beam (they extend only with a free <pad>), so
the whole batch moves in lock-step with fixed-size tensors. Candidates are ranked by
log-probability / length**length_penalty (length counts the words plus <end>): with 0 this is the
plain most-probable sequence; larger values favour longer captions. beam_size=1 is greedy.
The loop knows no penalty or bonus: score adjusters (adjusters.py) change each step's scores,
and the hypotheses keep the model's own log-probability. pipeline.py builds the adjusters and
rerankers a DecodeConfig asks for.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..data.vocab import Vocabulary
from .adjusters import ScoreAdjuster
from .base import Decoder, Hypothesis

NEG_INF = float("-inf")


@torch.inference_mode()
def beam_search(
    model: Decoder,
    features: torch.Tensor,
    *,
    beam_size: int = 3,
    max_len: int = 20,
    length_penalty: float = 0.0,
    n_best: int = 1,
    adjusters: Sequence[ScoreAdjuster] = (),
    required: torch.Tensor | None = None,
) -> list[list[Hypothesis]]:
    """Up to `n_best` (<= beam_size) finished hypotheses per row of `features`, best first.
    Each step's scores pass through `adjusters` in order before ranking.

    `required` (rows, vocab) bool: the caption must hold one of the row's words (a row without
    any is free). Constrained beam search (Anderson et al., 2017) with one disjunctive
    constraint: a second bank of beam_size beams holds the hypotheses that already contain a
    required word, each bank keeps its own best, and a row's answer comes from the satisfied
    bank when it finished any (else from the free bank)."""
    if beam_size < 1 or max_len < 1:
        raise ValueError("beam_size and max_len must be at least 1")
    if not 1 <= n_best <= beam_size:
        raise ValueError("n_best must be between 1 and beam_size")
    model.eval()
    b, k = features.shape[0], beam_size
    banks = 1 if required is None else 2
    width = banks * k  # beams per image
    pad, start, end, unk = (
        Vocabulary.pad_id,
        Vocabulary.start_id,
        Vocabulary.end_id,
        Vocabulary.unk_id,
    )
    state = model.repeat_state(model.init_state(features), width)
    device = features.device
    tokens = torch.full((b * width,), start, dtype=torch.long, device=device)
    # Only the first beam is live at the start, or the k beams would be k copies of one.
    scores = torch.full((b, width), NEG_INF, device=device)
    scores[:, 0] = 0.0
    raw = torch.zeros(b, width, device=device)  # the model's own log-probability
    lengths = torch.zeros(b, width, device=device)
    done = torch.zeros(b, width, dtype=torch.bool, device=device)
    seqs = torch.zeros(b, width, 0, dtype=torch.long, device=device)
    seen = None  # (b*width, vocab) words each hypothesis holds, for the adjusters
    bank = torch.arange(width, device=device).expand(b, -1) // k  # 1: holds a required word

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
        if seen is None and adjusters:
            seen = torch.zeros(b * width, vocab, dtype=torch.bool, device=device)
        for adjust in adjusters:
            guarded = adjust(guarded, seen)
        cand = (scores.view(-1, 1) + guarded).view(b, width * vocab)
        cand_len = (lengths + (~done).float()).view(-1, 1).expand(-1, vocab)
        cand_len = cand_len.reshape(b, width * vocab)
        norm = cand / cand_len.clamp(min=1) ** length_penalty if length_penalty else cand
        if required is None:
            top = norm.topk(k, dim=1).indices  # (b, k), ties broken deterministically
            scores = cand.gather(1, top)
        else:
            top, bank, live = _select_per_bank(norm, bank, required.to(device), k)
            scores = cand.gather(1, top).masked_fill(~live, NEG_INF)
        beam, word = top // vocab, top % vocab
        raw = raw.gather(1, beam) + logp.view(b, width * vocab).gather(1, top)
        lengths = cand_len.gather(1, top)
        done = done.gather(1, beam) | (word == end)
        seqs = torch.cat(
            [seqs.gather(1, beam.unsqueeze(-1).expand(-1, -1, seqs.shape[-1])), word.unsqueeze(-1)],
            dim=-1,
        )
        rows = (beam + torch.arange(b, device=device).unsqueeze(1) * width).view(-1)
        state = model.select_state(state, rows)
        tokens = word.view(-1)
        if seen is not None:
            seen = seen[rows]
            seen[torch.arange(b * width, device=device), tokens] = True
        if bool(done.all()):
            break

    final = scores / lengths.clamp(min=1) ** length_penalty if length_penalty else scores
    final = final.masked_fill(~done, NEG_INF)
    if required is not None:  # a satisfied caption, when the search found one, wins
        met = (bank == 1) & (final > NEG_INF)
        final = final.masked_fill(met.any(dim=1, keepdim=True) & ~met, NEG_INF)
    return _hypotheses(final, done, seqs, raw, n_best, end)


def _select_per_bank(
    norm: torch.Tensor, bank: torch.Tensor, required: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best candidates of each bank (free, satisfied): a candidate is satisfied when its
    beam was, or its word is required. Returns their flat indices (b, 2k), banks, and which
    are live (a bank with fewer than k candidates is padded with dead ones)."""
    b, vocab = required.shape
    width = bank.shape[1]
    lands = (bank.unsqueeze(-1).bool() | required.unsqueeze(1)).view(b, width * vocab)
    free = norm.masked_fill(lands, NEG_INF).topk(k, dim=1)
    met = norm.masked_fill(~lands, NEG_INF).topk(k, dim=1)
    top = torch.cat([free.indices, met.indices], dim=1)
    new_bank = torch.cat([torch.zeros_like(free.indices), torch.ones_like(met.indices)], dim=1)
    live = torch.cat([free.values, met.values], dim=1) > NEG_INF
    return top, new_bank, live


def _hypotheses(
    final: torch.Tensor, done: torch.Tensor, seqs: torch.Tensor, raw: torch.Tensor, n: int, end: int
) -> list[list[Hypothesis]]:
    order = final.argsort(dim=1, descending=True, stable=True)
    out = []
    for i in range(final.shape[0]):
        hyps = []
        for j in order[i, :n].tolist():
            if not bool(done[i, j]) or final[i, j] == NEG_INF:
                continue
            ids = seqs[i, j].tolist()
            ids = ids[: ids.index(end)] if end in ids else ids
            hyps.append(Hypothesis(ids, float(raw[i, j])))
        out.append(hyps or [Hypothesis([], float("-inf"))])
    return out


def sample(
    model: Decoder,
    features: torch.Tensor,
    n: int,
    max_len: int,
    greedy: bool = False,
    generator: torch.Generator | None = None,
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
