"""Training: data -> vocabulary -> feature source -> epochs of teacher forcing, scoring the dev
split after each epoch, keeping the best, checkpointing, and resuming after interruption.

Run folder layout (``out``):
  model/           the best epoch's bundle (what `captioner caption --model` loads)
  checkpoint/      last epoch's weights, optimiser and RNG state (resume point)
  metrics.jsonl    one JSON line per epoch

Progress goes to a `Reporter` (core.progress); a reporter may raise StopTraining after an
``epoch`` event to end the run at that checkpoint.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .. import __version__
from ..config import TrainConfig
from ..core.errors import TrainingError
from ..core.progress import Event, Reporter, silent
from ..data.vocab import Vocabulary
from ..decoders.base import DecoderConfig
from ..decoders.registry import build_decoder
from ..evaluation.evaluate import dev_scores, final_scores
from ..storage import checkpoint
from ..storage.bundle import Bundle, save_bundle
from ..vision.registry import get_spec
from .batches import count_batches, epoch_batches, learning_rate
from .sources import Data, make_source, prepare_data


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda was asked for but no CUDA GPU is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def model_card(cfg: TrainConfig, metrics: dict, n_train: int, n_dev: int) -> str:
    dev = metrics.get("dev", {})
    rows = "\n".join(f"| {k} | {v:.3f} |" for k, v in dev.items() if isinstance(v, float))
    encoder = (
        "last stage fine-tuned on this data" if cfg.finetune_encoder else "frozen"
    ) + ", ImageNet weights"
    return f"""# captioner model

Show and Tell (CNN encoder -> LSTM decoder) trained with captioner {__version__}.

- **Data**: {cfg.dataset_format} at `{cfg.dataset_path}`, split `{cfg.train_split}` \
({n_train} images); best epoch chosen on `{cfg.dev_split}` ({n_dev} images).
- **Encoder**: {cfg.encoder} ({encoder}), {get_spec(cfg.encoder).image_size} px.
- **Decoder**: embedding {cfg.embed_size}, LSTM {cfg.num_layers}x{cfg.hidden_size}, \
dropout {cfg.dropout}, vocabulary threshold {cfg.vocab_threshold}.
- **Training**: {cfg.epochs} epochs, batch {cfg.batch_size}, learning rate {cfg.learning_rate} \
({cfg.lr_schedule}), label smoothing {cfg.label_smoothing}, seed {cfg.seed}; \
best epoch {metrics.get("best_epoch")}; {metrics.get("train_seconds", 0) / 60:.1f} minutes.

## Dev-split scores (beam {cfg.beam_size}, pycocoevalcap)

| metric | value |
|---|---|
{rows}
"""


def _padded(caps: list[tuple[int, list[int]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """All captions padded once; a batch is a row selection cut to its longest caption."""
    lengths = torch.tensor([len(c) for _, c in caps])
    padded = torch.zeros(len(caps), int(lengths.max()), dtype=torch.long)
    for j, (_, c) in enumerate(caps):
        padded[j, : len(c)] = torch.tensor(c)
    return padded, lengths


def train(cfg: TrainConfig, out: Path, report: Reporter = silent, data: Data | None = None) -> Path:
    """Train (or resume) a model; returns the bundle folder. `data` skips preparation (bench
    scripts pass features they already hold)."""
    out = Path(out)
    t0 = time.time()
    device = pick_device(cfg.device)
    ckpt, log_path = out / "checkpoint", out / "metrics.jsonl"
    if (
        checkpoint.exists(ckpt)
        and checkpoint.read_meta(ckpt).get("fingerprint") != cfg.fingerprint()
    ):
        raise TrainingError(
            f"{out} holds a run with different settings; use another --out "
            "or delete that folder to start over"
        )
    data = data or prepare_data(cfg, device, report)
    source = make_source(cfg, data, device)
    if cfg.finetune_encoder:
        report(
            Event(
                "data",
                message="fine-tuning the encoder's last stage: images are encoded "
                "every step (no feature cache) with random crops and flips; a GPU is "
                "strongly advised",
            )
        )
    # Seed after data preparation: feature extraction may or may not run (cache) and its
    # DataLoader draws from the global RNG, which must not change the model's initialisation.
    torch.manual_seed(cfg.seed)
    model = build_decoder(
        DecoderConfig(
            feature_dim=source.feature_dim,
            vocab_size=len(data.vocab),
            embed_size=cfg.embed_size,
            hidden_size=cfg.hidden_size,
            num_layers=cfg.num_layers,
            dropout=cfg.dropout,
        )
    ).to(device)
    groups = [{"params": list(model.parameters()), "lr_scale": 1.0}]
    if source.parameters():
        groups.append(
            {"params": source.parameters(), "lr_scale": cfg.encoder_lr / cfg.learning_rate}
        )
    opt = torch.optim.AdamW(groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    trained = [p for g in groups for p in g["params"]]
    loss_fn = torch.nn.CrossEntropyLoss(
        ignore_index=Vocabulary.pad_id, label_smoothing=cfg.label_smoothing
    )

    out.mkdir(parents=True, exist_ok=True)
    start_epoch, best, best_state, history, elapsed = 0, None, {}, [], 0.0
    if checkpoint.exists(ckpt):
        state = checkpoint.load_checkpoint(ckpt, model, opt)
        source.load_state(state.extra)
        best_state = state.best_state
        start_epoch, best, history = state.meta["epoch"], state.meta["best"], state.meta["history"]
        elapsed = state.meta.get("elapsed", 0.0)
        report(Event("data", message=f"resuming {out} after epoch {start_epoch}"))
    else:
        log_path.unlink(missing_ok=True)  # a fresh run must not inherit an old log

    steps = count_batches(len(data.train_caps), cfg.batch_size)
    padded, lengths = _padded(data.train_caps)
    image_of = torch.tensor([i for i, _ in data.train_caps])
    t_run, done_steps = time.time(), 0
    total_steps = cfg.epochs * steps
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        batches = epoch_batches(data.train_caps, cfg.batch_size, cfg.seed * 1000 + epoch)
        total, t_epoch = 0.0, time.time()
        for s, (idx, inputs) in enumerate(
            zip(batches, source.inputs(batches, epoch), strict=False)
        ):
            rows = torch.tensor(idx)
            tokens = padded[rows, : int(lengths[rows].max())].to(device)
            for g in opt.param_groups:
                g["lr"] = learning_rate(cfg, epoch * steps + s, steps) * g.get("lr_scale", 1.0)
            # bf16 autocast on CUDA (no loss scaling needed); plain fp32 on CPU.
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                img = source.features(image_of[rows], inputs, device)
                logits = model(img, tokens[:, :-1])
                loss = loss_fn(
                    logits.reshape(-1, logits.shape[-1]).float(), tokens[:, 1:].reshape(-1)
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trained, cfg.grad_clip)
            opt.step()
            total += loss.item()
            done_steps += 1
            rate = (time.time() - t_run) / done_steps
            at = epoch * steps + s + 1
            report(
                Event(
                    "train",
                    at,
                    total_steps,
                    {
                        "epoch": epoch + 1,
                        "epochs": cfg.epochs,
                        "step": s + 1,
                        "steps": steps,
                        "loss": total / (s + 1),
                        "eta_s": round((total_steps - at) * rate),
                    },
                )
            )
        report(Event("dev", 0, len(data.dev_records), message="scoring the dev split"))
        scores = dev_scores(
            model, data.vocab, source.dev_features(), data.dev_records, cfg.decoding
        )
        line = {
            "epoch": epoch + 1,
            "loss": total / steps,
            "lr": opt.param_groups[0]["lr"],
            "seconds": time.time() - t_epoch,
            **{f"dev_{k}": v for k, v in scores.items()},
        }
        history.append(line)
        if best is None or scores["CIDEr"] > best["CIDEr"]:
            best = {**scores, "epoch": epoch + 1}
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            best_state.update({k: v.clone() for k, v in source.state().items()})
        with log_path.open("a") as fh:
            fh.write(json.dumps(line) + "\n")
        checkpoint.save_checkpoint(
            ckpt,
            model,
            opt,
            best_state,
            {
                "epoch": epoch + 1,
                "best": best,
                "history": history,
                "elapsed": elapsed + time.time() - t0,
                "fingerprint": cfg.fingerprint(),
            },
            source.state(),
        )
        report(
            Event(
                "epoch",
                epoch + 1,
                cfg.epochs,
                {**line, "best_CIDEr": best["CIDEr"], "best_epoch": best["epoch"]},
            )
        )

    source.load_state(best_state)
    model.load_state_dict({k: v for k, v in best_state.items() if not k.startswith("encoder.")})
    model.eval()
    report(Event("dev", 0, len(data.dev_records), message="final dev scores of the best epoch"))
    metrics = {
        "dev": final_scores(
            model, data.vocab, source.dev_features(), data.dev_records, cfg.decoding
        ),
        "best_epoch": best["epoch"],
        "dev_split": cfg.dev_split,
        "beam_size": cfg.beam_size,
        "train_seconds": round(elapsed + time.time() - t0, 1),
        "history": history,
    }
    bundle = Bundle(
        model,
        data.vocab,
        cfg.encoder,
        cfg.decoding,
        cfg.model_dump(mode="json"),
        metrics,
        encoder_state=source.bundle_state(),
    )
    card = model_card(cfg, metrics, int(image_of.max()) + 1, len(data.dev_records))
    report(Event("save", message=f"saving the model to {out / 'model'}"))
    save_bundle(out / "model", bundle, card)
    report(Event("done", 1, 1, metrics["dev"], message=f"model saved to {out / 'model'}"))
    return out / "model"
