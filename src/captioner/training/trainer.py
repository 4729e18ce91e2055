"""Training: data -> vocabulary -> feature source -> epochs of teacher forcing, scoring the dev
split after each epoch, keeping the best, checkpointing, and resuming after interruption.

Run folder layout (``out``):
  model/           the best epoch's bundle (what `captioner caption --model` loads)
  checkpoint/      last epoch's weights, optimiser and RNG state (resume point)
  metrics.jsonl    one JSON line per epoch

With average_epochs = N > 1, the mean of the last N cross-entropy epochs' weights is scored
after the last of them and kept as the best when its dev CIDEr-D is higher (checkpoint
averaging: the mean sits nearer the centre of the flat region the last epochs wander through).

Progress goes to a `Reporter` (core.progress); a reporter may raise StopTraining after an
``epoch`` event to end the run at that checkpoint. The checkpoint's history is the record of
the epochs done: a resumed run reports it first (a ``resume`` event), and a reporter that keeps
its own copy (a web job's) takes it, since a stop after an epoch's checkpoint but before its
``epoch`` event leaves that epoch checkpointed (never redone) yet unreported;
`recorded_history` reads it after such a stop.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import TrainConfig
from ..core.atomic import write_text
from ..core.errors import CheckpointError, TrainingError
from ..core.keys import AVERAGE, prefixed, unowned, unprefixed
from ..core.progress import Event, Reporter, silent
from ..data.vocab import SPECIALS, Vocabulary
from ..decoders.base import DecoderConfig
from ..decoders.registry import build_decoder
from ..evaluation.evaluate import dev_scores
from ..storage import checkpoint
from ..storage.bundle import Bundle, save_bundle
from ..vision.registry import IMAGENET_CLASSES
from .batches import count_batches, epoch_batches, learning_rate
from .card import model_card
from .scst import SelfCritical, image_batches
from .sources import Data, make_source, neighbour_index, prepare_data


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda was asked for but no CUDA GPU is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _padded(caps: list[tuple[int, list[int]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """All captions padded once; a batch is a row selection cut to its longest caption."""
    lengths = torch.tensor([len(c) for _, c in caps])
    padded = torch.zeros(len(caps), int(lengths.max()), dtype=torch.long)
    for j, (_, c) in enumerate(caps):
        padded[j, : len(c)] = torch.tensor(c)
    return padded, lengths


@dataclass
class _Record:
    """What the epochs so far leave: where to go on, the best scores and weights, the history
    (one line per epoch, as in metrics.jsonl) and the training time before this process."""

    start: int = 0
    best: dict | None = None
    best_state: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    elapsed: float = 0.0


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
    neighbours = _neighbours(cfg, data, report)
    # Seed after data preparation: feature extraction may or may not run (cache) and its
    # DataLoader draws from the global RNG, which must not change the model's initialisation.
    torch.manual_seed(cfg.seed)
    model, opt, trained = _model_and_optimiser(cfg, data, source, device)
    loss_fn = torch.nn.CrossEntropyLoss(
        ignore_index=Vocabulary.pad_id, label_smoothing=cfg.label_smoothing
    )
    out.mkdir(parents=True, exist_ok=True)
    average = _Average(cfg)
    rec = _resume(ckpt, log_path, model, opt, source, average, cfg, report)
    run = _Epochs(cfg, data, source, model, opt, trained, loss_fn, device, report)

    def score_dev(final: bool = False) -> dict[str, float]:
        """The dev split captioned by the model's current weights, with the run's decoding."""
        return dev_scores(
            model,
            data.vocab,
            source.dev_features(),
            data.dev_records,
            cfg.decode,
            final=final,
            neighbours=neighbours,
        )

    for epoch in range(rec.start, cfg.epochs + cfg.scst_epochs):
        t_epoch = time.time()
        if epoch < cfg.epochs:
            extra = {"loss": run.cross_entropy(epoch)}
        else:
            if epoch == cfg.epochs:  # self-critical training starts from the best XE epoch
                model.load_state_dict(unowned(rec.best_state))
            extra = run.self_critical(epoch)  # policy-gradient loss and mean sample reward
        run.finite(run.trained, epoch)  # the weights, once an epoch (the loss: every step)
        line, candidates = _score_epoch(epoch, run, average, score_dev, report)
        line = {
            "epoch": epoch + 1,
            "phase": "xe" if epoch < cfg.epochs else "scst",
            **extra,
            "lr": opt.param_groups[0]["lr"],
            "seconds": time.time() - t_epoch,
            **line,
        }
        rec.history.append(line)
        for found, at, n, weights in candidates:
            if rec.best is None or found["CIDEr"] > rec.best["CIDEr"]:
                rec.best = {**found, "epoch": at, "averaged": n}
                rec.best_state = _weights(model, source) if weights is None else _copy(weights)
        with log_path.open("a") as fh:
            fh.write(json.dumps(line) + "\n")
        _checkpoint(ckpt, run, average, rec, epoch, time.time() - t0)
        best = rec.best
        report(
            Event(
                "epoch",
                epoch + 1,
                cfg.epochs + cfg.scst_epochs,
                {
                    **line,
                    "best_CIDEr": best["CIDEr"],
                    "best_epoch": best["epoch"],
                    "best_averaged": best.get("averaged", 1),
                },
            )
        )
    return _save(out, cfg, run, rec, neighbours, score_dev, time.time() - t0)


def _neighbours(cfg: TrainConfig, data: Data, report: Reporter):
    """The training photos' index for consensus decoding (when the decoding reads it)."""
    neighbours = None
    if cfg.decode.rerank_neighbours:
        report(Event("data", message="indexing the training photos for consensus reranking"))
        neighbours = neighbour_index(data)
    if cfg.finetune_encoder:
        report(
            Event(
                "data",
                message="fine-tuning the encoder's last stage: images are encoded "
                "every step (no feature cache) with random crops and flips; a GPU is "
                "strongly advised",
            )
        )
    return neighbours


def _model_and_optimiser(cfg: TrainConfig, data: Data, source, device: torch.device):
    """The decoder (with the encoder's class head when asked), its optimiser and every
    trained parameter (the fine-tuned encoder stage's too, at its own learning rate)."""
    if len(data.vocab) <= len(SPECIALS):  # else DecoderConfig refuses it in pydantic's words
        raise TrainingError(
            f"vocab_threshold = {cfg.vocab_threshold} keeps no word of the captions; lower it"
        )
    model = build_decoder(
        DecoderConfig(
            kind=cfg.decoder,
            feature_dim=source.feature_dim,
            vocab_size=len(data.vocab),
            embed_size=cfg.embed_size,
            hidden_size=cfg.hidden_size,
            num_layers=cfg.num_layers,
            dropout=cfg.dropout,
            attention_size=cfg.attention_size,
            num_classes=IMAGENET_CLASSES if cfg.class_evidence else 0,
        )
    )
    if cfg.class_evidence:
        from ..vision.classes import class_head

        head = class_head(cfg.encoder)
        model.set_class_head(head.weight, head.bias)
    model = model.to(device)
    groups = [{"params": list(model.parameters()), "lr_scale": 1.0}]
    if source.parameters():
        groups.append(
            {"params": source.parameters(), "lr_scale": cfg.encoder_lr / cfg.learning_rate}
        )
    opt = torch.optim.AdamW(groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    return model, opt, [p for g in groups for p in g["params"]]


def _resume(ckpt: Path, log_path: Path, model, opt, source, average, cfg, report) -> _Record:
    """The record of a checkpointed run, its weights loaded (or a fresh record)."""
    if not checkpoint.exists(ckpt):
        log_path.unlink(missing_ok=True)  # a fresh run must not inherit an old log
        return _Record()
    state = checkpoint.load_checkpoint(ckpt, model, opt)
    source.load_state(state.extra)
    average.load(state.extra, state.meta.get("average"))
    meta = state.meta
    rec = _Record(
        meta["epoch"], meta["best"], state.best_state, meta["history"], meta.get("elapsed", 0.0)
    )
    # The checkpoint's history is the record: a kill between the log line and the
    # checkpoint would otherwise leave that epoch in the log twice once it is rerun.
    write_text(log_path, "".join(json.dumps(h) + "\n" for h in rec.history))
    report(
        Event(
            "resume",
            rec.start,
            cfg.epochs + cfg.scst_epochs,
            {"history": [dict(h) for h in rec.history]},
            message=f"resuming {ckpt.parent} after epoch {rec.start}",
        )
    )
    return rec


def _score_epoch(epoch: int, run, average, score_dev, report) -> tuple[dict, list]:
    """Dev scores of this epoch's weights (and of the mean of the last epochs' when this
    epoch completes that window): the log line's scores and the candidates for the best."""
    model, source, n_dev = run.model, run.source, len(run.data.dev_records)
    report(Event("dev", 0, n_dev, message="scoring the dev split"))
    t_dev = time.time()
    scores = score_dev()
    # scored (no message: the epoch event says the scores)
    report(Event("dev", n_dev, n_dev, {"seconds": round(time.time() - t_dev, 1), **scores}))
    candidates = [(scores, epoch + 1, 1, None)]
    if average.covers(epoch) and average.add(epoch, raw := _weights(model, source)):
        n = run.cfg.average_epochs
        report(Event("dev", 0, n_dev, message=f"scoring the mean of the last {n} epochs"))
        _load_weights(model, source, average.state)
        mean_scores = score_dev()
        _load_weights(model, source, raw)
        report(Event("dev", n_dev, n_dev, mean_scores))
        candidates.append((mean_scores, epoch + 1, n, average.state))
    line = {
        **{f"dev_{k}": v for k, v in scores.items()},
        **{f"mean_dev_{k}": v for c in candidates[1:] for k, v in c[0].items()},
    }
    return line, candidates


def _checkpoint(ckpt: Path, run, average, rec: _Record, epoch: int, seconds: float) -> None:
    checkpoint.save_checkpoint(
        ckpt,
        run.model,
        run.opt,
        rec.best_state,
        {
            "epoch": epoch + 1,
            "best": rec.best,
            "history": rec.history,
            "elapsed": rec.elapsed + seconds,
            "fingerprint": run.cfg.fingerprint(),
            "average": average.meta(),
        },
        {**run.source.state(), **average.tensors()},
    )


def _save(out: Path, cfg: TrainConfig, run, rec: _Record, neighbours, score_dev, seconds) -> Path:
    """The best weights scored once more (final metrics, PTB tokenizer) and saved as the
    bundle with its card."""
    model, source, data, report = run.model, run.source, run.data, run.report
    source.load_state(rec.best_state)
    model.load_state_dict(unowned(rec.best_state))
    model.eval()
    report(Event("dev", 0, len(data.dev_records), message="final dev scores of the best epoch"))
    metrics = {
        "dev": score_dev(final=True),
        "best_epoch": rec.best["epoch"],
        "averaged_epochs": rec.best.get("averaged", 1),
        "dev_split": cfg.dev_split,
        "beam_size": cfg.decode.beam_size,
        "train_seconds": round(rec.elapsed + seconds, 1),
        "history": rec.history,
    }
    bundle = Bundle(
        model,
        data.vocab,
        cfg.encoder,
        cfg.decode,
        cfg.model_dump(mode="json"),
        metrics,
        encoder_state=source.bundle_state(),
        neighbours=neighbours,
    )
    card = model_card(cfg, metrics, run.n_images, len(data.dev_records))
    report(Event("save", message=f"saving the model to {out / 'model'}"))
    save_bundle(out / "model", bundle, card)
    report(Event("done", 1, 1, metrics["dev"], message=f"model saved to {out / 'model'}"))
    return out / "model"


def recorded_history(out: Path) -> list[dict] | None:
    """The epochs the run folder `out` has checkpointed (its checkpoint's history: the record a
    resume continues from, and what a resumed run reports in its ``resume`` event), or None
    without a readable checkpoint. After a stop, a copy of the history kept from ``epoch``
    events may lack the last epoch: the stop can land after its checkpoint, before its event."""
    ckpt = Path(out) / "checkpoint"
    if not checkpoint.exists(ckpt):
        return None
    try:
        return list(checkpoint.read_meta(ckpt).get("history", []))
    except CheckpointError:
        return None


def _weights(model: torch.nn.Module, source) -> dict[str, torch.Tensor]:
    """A copy of everything trained: the decoder's state and the source's (encoder.*)."""
    return _copy({**model.state_dict(), **source.state()})


def _copy(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in weights.items()}


def _load_weights(model: torch.nn.Module, source, weights: dict[str, torch.Tensor]) -> None:
    model.load_state_dict(unowned(weights))
    source.load_state(weights)


class _Average:
    """Running mean (fp32) of the weights of the last `average_epochs` cross-entropy epochs;
    it travels in the checkpoint so a resumed run averages the same epochs."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.first = cfg.epochs - cfg.average_epochs  # 0-based index of the first epoch
        self.last = cfg.epochs - 1
        self.on = cfg.average_epochs > 1
        self.state: dict[str, torch.Tensor] = {}
        self.count = 0

    def covers(self, epoch: int) -> bool:
        return self.on and self.first <= epoch <= self.last

    def add(self, epoch: int, weights: dict[str, torch.Tensor]) -> bool:
        """Fold in this epoch's weights (an epoch it covers); True after the window's last."""
        if self.count != epoch - self.first:  # a window from other settings: start again
            self.state, self.count = {}, 0
        n = self.count
        self.state = {
            k: (self.state[k] + (v.float() - self.state[k]) / (n + 1) if n else v.float())
            if v.is_floating_point()
            else v.clone()  # integer buffers: the latest
            for k, v in weights.items()
        }
        self.count = n + 1
        return epoch == self.last and self.count > 1

    def meta(self) -> dict:
        return {"first": self.first, "count": self.count}

    def tensors(self) -> dict[str, torch.Tensor]:
        return prefixed(AVERAGE, {k: v.contiguous() for k, v in self.state.items()})

    def load(self, extra: dict[str, torch.Tensor], meta: dict | None) -> None:
        if self.on and meta and meta.get("first") == self.first:
            self.state = unprefixed(AVERAGE, extra)
            self.count = int(meta.get("count", 0)) if self.state else 0


class _Epochs:
    """One run's epochs: cross-entropy with teacher forcing, then self-critical. Reports a
    ``train`` event per step with the whole run's progress and ETA."""

    def __init__(self, cfg, data, source, model, opt, trained, loss_fn, device, report) -> None:
        self.cfg, self.data, self.source, self.model = cfg, data, source, model
        self.opt, self.trained, self.loss_fn, self.device = opt, trained, loss_fn, device
        self.report = report
        self.steps = count_batches(len(data.train_caps), cfg.batch_size)
        self.padded, self.lengths = _padded(data.train_caps)
        self.image_of = torch.tensor([i for i, _ in data.train_caps])
        self.n_images = int(self.image_of.max()) + 1
        self.scst_steps = -(-self.n_images // cfg.scst_batch_size)
        self.total = cfg.epochs * self.steps + cfg.scst_epochs * self.scst_steps
        self.t_run, self.done_steps = time.time(), 0
        self.critic = None

    def _progress(self, epoch: int, step: int, steps: int, loss: float, extra: dict) -> None:
        self.done_steps += 1
        rate = (time.time() - self.t_run) / self.done_steps
        cfg = self.cfg
        at = (
            min(epoch, cfg.epochs) * self.steps
            + max(0, epoch - cfg.epochs) * self.scst_steps
            + step
        )
        metrics = {
            "epoch": epoch + 1,
            "epochs": cfg.epochs + cfg.scst_epochs,
            "step": step,
            "steps": steps,
            "loss": loss,
            "eta_s": round((self.total - at) * rate),
            **extra,
        }
        self.report(Event("train", at, self.total, metrics))

    def _update(self, loss: torch.Tensor, epoch: int) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.trained, self.cfg.grad_clip)
        self.finite([loss.detach(), norm], epoch)  # before the step: no weight changes
        self.opt.step()

    def finite(self, tensors: list[torch.Tensor], epoch: int) -> None:
        """Stop at the first step (or epoch, for the weights) that diverges: never save NaN."""
        if not torch.stack([t.detach().isfinite().all() for t in tensors]).all():
            raise TrainingError(
                f"training diverged in epoch {epoch + 1}: the loss or the weights became infinite "
                "or NaN; start a new run with a lower learning_rate or weight_decay"
            )

    def cross_entropy(self, epoch: int) -> float:
        cfg, model, device, steps = self.cfg, self.model, self.device, self.steps
        model.train()
        batches = epoch_batches(self.data.train_caps, cfg.batch_size, cfg.seed * 1000 + epoch)
        total = 0.0
        for s, (idx, inputs) in enumerate(
            zip(batches, self.source.inputs(batches, epoch), strict=False)
        ):
            rows = torch.tensor(idx)
            tokens = self.padded[rows, : int(self.lengths[rows].max())].to(device)
            for g in self.opt.param_groups:
                g["lr"] = learning_rate(cfg, epoch * steps + s, steps) * g.get("lr_scale", 1.0)
            # bf16 autocast on CUDA (no loss scaling needed); plain fp32 on CPU.
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                img = self.source.features(self.image_of[rows], inputs, device)
                logits = model(img, tokens[:, :-1])
                loss = self.loss_fn(
                    logits.reshape(-1, logits.shape[-1]).float(), tokens[:, 1:].reshape(-1)
                )
            self._update(loss, epoch)
            total += loss.item()
            self._progress(epoch, s + 1, steps, total / (s + 1), {"phase": "xe"})
        return total / steps

    def self_critical(self, epoch: int) -> dict[str, float]:
        cfg, device = self.cfg, self.device
        if self.critic is None:
            self.critic = SelfCritical(cfg, self.data.vocab, self.data.train_refs)
        for g in self.opt.param_groups:
            g["lr"] = cfg.scst_lr * g.get("lr_scale", 1.0)
        generator = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + epoch)
        batches = image_batches(self.n_images, cfg.scst_batch_size, cfg.seed * 1000 + epoch)
        total, rewards = 0.0, 0.0
        for s, idx in enumerate(batches):
            images = torch.tensor(idx)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                feats = self.source.features(images, None, device)
                loss, reward = self.critic.loss(self.model, feats, images, generator)
            self._update(loss, epoch)
            total, rewards = total + loss.item(), rewards + reward
            self._progress(
                epoch,
                s + 1,
                len(batches),
                total / (s + 1),
                {"phase": "scst", "reward": rewards / (s + 1)},
            )
        n = max(1, len(batches))
        return {"loss": total / n, "reward": rewards / n}
