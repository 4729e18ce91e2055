"""The model card (README.md in the bundle): what was trained, on what, how, and its scores."""

from __future__ import annotations

from .. import __version__
from ..config import TrainConfig
from ..decoders.registry import decoder_spec
from ..vision.registry import get_spec


def model_card(cfg: TrainConfig, metrics: dict, n_train: int, n_dev: int) -> str:
    dev = metrics.get("dev", {})
    rows = "\n".join(f"| {k} | {v:.3f} |" for k, v in dev.items() if isinstance(v, float))
    encoder = (
        "last stage fine-tuned on this data" if cfg.finetune_encoder else "frozen"
    ) + ", ImageNet weights"
    spec = decoder_spec(cfg.decoder)
    name = spec.title
    decoder = f"LSTM {cfg.num_layers}x{cfg.hidden_size}"
    if spec.input == "grid":
        decoder = f"attention {cfg.attention_size}, {decoder}"
    if cfg.class_evidence:
        decoder += ", attends to the encoder's own ImageNet class probabilities"
    scst = (
        f"; then {cfg.scst_epochs} self-critical epochs (CIDEr-D reward, {cfg.scst_baseline} "
        f"baseline, {cfg.scst_samples} samples per image, learning rate {cfg.scst_lr})"
        if cfg.scst_epochs
        else ""
    )
    return f"""# captioner model

{name}, trained with captioner {__version__}.

- **Data**: {cfg.dataset_format} at `{cfg.dataset_path}`, split `{cfg.train_split}` \
({n_train} images); best epoch chosen on `{cfg.dev_split}` ({n_dev} images).
- **Encoder**: {cfg.encoder} ({encoder}), {get_spec(cfg.encoder).image_size} px.
- **Decoder**: embedding {cfg.embed_size}, {decoder}, dropout {cfg.dropout}, vocabulary \
threshold {cfg.vocab_threshold}.
- **Training**: {cfg.epochs} cross-entropy epochs, batch {cfg.batch_size}, learning rate \
{cfg.learning_rate} ({cfg.lr_schedule}), label smoothing {cfg.label_smoothing}{scst}; seed \
{cfg.seed}; best: {_best_text(metrics)}; \
{metrics.get("train_seconds", 0) / 60:.1f} minutes.

## Dev-split scores ({_decoding(cfg)}, pycocoevalcap)

| metric | value |
|---|---|
{rows}
"""


def _best_text(metrics: dict) -> str:
    epoch, n = metrics.get("best_epoch"), metrics.get("averaged_epochs", 1)
    if n > 1:
        return f"the mean of epochs {epoch - n + 1}-{epoch}'s weights"
    return f"epoch {epoch}"


def _decoding(cfg: TrainConfig) -> str:
    d = cfg.decode
    parts = [f"beam {d.beam_size}", f"length penalty {d.length_penalty}"]
    if d.repetition_penalty:
        parts.append(f"repetition guard {d.repetition_penalty}")
    if d.class_guidance:
        parts.append(f"class guidance {d.class_guidance}")
    if d.rerank_neighbours:
        parts.append(
            f"consensus reranking with {d.rerank_neighbours} neighbours (weight {d.rerank_weight}"
            f", precision {d.rerank_precision}, guidance {d.neighbour_guidance})"
        )
    return ", ".join(parts)
