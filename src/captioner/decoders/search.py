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
) -> list[list[Hypothesis]]:
    """Up to `n_best` (<= beam_size) finished hypotheses per row of `features`, best first.
    Each step's scores pass through `adjusters` in order before ranking."""
    if beam_size < 1 or max_len < 1:
        raise ValueError("beam_size and max_len must be at least 1")
    if not 1 <= n_best <= beam_size:
        raise ValueError("n_best must be between 1 and beam_size")
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
    seen = None  # (b*k, vocab) words each hypothesis holds, for the adjusters

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
            seen = torch.zeros(b * k, vocab, dtype=torch.bool, device=device)
        for adjust in adjusters:
            guarded = adjust(guarded, seen)
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
