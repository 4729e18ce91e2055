"""Training: read data -> vocabulary -> cached features -> epochs of teacher forcing, scoring the
dev split after each epoch, keeping the best, checkpointing, and resuming after interruption.

Run folder layout (``out``):
  model/           the best epoch's bundle (what `captioner caption --model` loads)
  checkpoint/      last epoch's weights, optimiser and RNG state (resume point)
  metrics.jsonl    one JSON line per epoch
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from . import __version__
from .bundle import Bundle, make_readable, replace_dir, save_bundle, write_json
from .config import TrainConfig
from .datasets import Record, load_dataset
from .decode import beam_search
from .encoders import Encoder, augment, get_spec, open_image
from .evaluate import ALL_METRICS, score_records
from .features import _stack, extract_features
from .model import ModelConfig, ShowAndTell
from .vocab import Vocabulary


class TrainingError(RuntimeError):
    pass


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda was asked for but no CUDA GPU is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


@dataclass
class Data:
    vocab: Vocabulary
    # (N_img, D): the cache's read-only fp16 memmap (rows are read per batch, so full COCO
    # never has to fit in memory) or a tensor; None when the encoder is fine-tuned.
    train_feats: np.ndarray | torch.Tensor | None
    train_caps: list[tuple[int, list[int]]]  # (image index, token ids)
    dev_feats: torch.Tensor | None
    dev_records: list[Record]
    train_images: list[Path] = field(default_factory=list)


def prepare_data(cfg: TrainConfig, progress: bool = True) -> Data:
    kw = {"images": cfg.images, "skip_missing": cfg.skip_missing}
    train = load_dataset(cfg.dataset_format, cfg.dataset_path, cfg.train_split, **kw)
    dev = load_dataset(cfg.dataset_format, cfg.dataset_path, cfg.dev_split, **kw)
    vocab = Vocabulary.build((c for r in train for c in r.captions), cfg.vocab_threshold)
    caps = [(i, vocab.encode(c)[: cfg.max_len + 2]) for i, r in enumerate(train)
            for c in r.captions]
    images = [r.image for r in train]
    if cfg.finetune_encoder:  # features change as the encoder learns: nothing to cache
        return Data(vocab, None, caps, None, dev, images)
    fx = {"cache_dir": cfg.cache_dir, "workers": cfg.workers, "progress": progress,
          "device": str(pick_device(cfg.device))}
    train_feats = extract_features(images, cfg.encoder, **fx)
    dev_feats = extract_features([r.image for r in dev], cfg.encoder, **fx)
    return Data(vocab, train_feats, caps,
                torch.from_numpy(np.asarray(dev_feats, dtype=np.float32)), dev, images)


_CHUNK_BATCHES = 50


def count_batches(n: int, batch_size: int) -> int:
    """len(epoch_batches(...)) without shuffling: full chunks, then the last partial one."""
    chunk = batch_size * _CHUNK_BATCHES
    return (n // chunk) * _CHUNK_BATCHES + math.ceil((n % chunk) / batch_size)


def epoch_batches(caps: list[tuple[int, list[int]]], batch_size: int, seed: int
                  ) -> list[list[int]]:
    """Every caption once, in batches of similar length (little padding, so ~40% less compute
    than random batches on CPU); batch order and membership are shuffled by `seed`."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(caps), generator=g).tolist()
    # Sort by length within chunks of 50 batches: similar lengths, but still random neighbours.
    chunk = batch_size * _CHUNK_BATCHES
    batches = []
    for c in range(0, len(order), chunk):
        part = sorted(order[c:c + chunk], key=lambda i: len(caps[i][1]))
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    perm = torch.randperm(len(batches), generator=g).tolist()
    return [batches[i] for i in perm]


def learning_rate(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Linear warm-up over the first epoch, then cosine decay to 5% (or constant)."""
    warm = steps_per_epoch
    if step < warm:
        return cfg.learning_rate * (step + 1) / warm
    if cfg.lr_schedule == "constant":
        return cfg.learning_rate
    total = max(1, cfg.epochs * steps_per_epoch - warm)
    progress = min(1.0, (step - warm) / total)
    return cfg.learning_rate * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def caption_features(model: ShowAndTell, vocab: Vocabulary, feats: torch.Tensor,
                     beam_size: int, max_len: int, length_penalty: float,
                     batch: int = 250) -> list[str]:
    device = next(model.parameters()).device
    out: list[str] = []
    for i in range(0, len(feats), batch):
        seqs = beam_search(model, feats[i:i + batch].to(device), beam_size, max_len,
                           length_penalty)
        out.extend(vocab.decode(s) for s in seqs)
    return out


def dev_scores(model: ShowAndTell, data: Data, cfg: TrainConfig) -> dict[str, float]:
    caps = caption_features(model, data.vocab, data.dev_feats, cfg.beam_size, cfg.max_len,
                            cfg.length_penalty)
    # Captioner's own tokenizer per epoch (no Java start-up, ~0.001 from PTB); the final model
    # is re-scored with the official PTB pipeline in `final_scores`.
    scores = score_records(data.dev_records, caps, ("bleu", "cider"), tokenizer="simple")
    return {k: scores[k] for k in ("BLEU-4", "CIDEr", "BLEU-1", "mean_length")}


def final_scores(model: ShowAndTell, data: Data, cfg: TrainConfig) -> dict[str, float]:
    """All metrics for the chosen model, through the official PTB tokenizer when Java exists."""
    caps = caption_features(model, data.vocab, data.dev_feats, cfg.beam_size, cfg.max_len,
                            cfg.length_penalty)
    metrics = ALL_METRICS if shutil.which("java") else ("bleu", "rouge", "cider")
    return score_records(data.dev_records, caps, metrics)


# --- checkpoints: tensors in safetensors, everything else in JSON (no pickle) -----------------

def _save_checkpoint(path: Path, model: ShowAndTell, opt: torch.optim.Optimizer,
                     best_state: dict[str, torch.Tensor], meta: dict,
                     encoder: Encoder | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".checkpoint.tmp-", dir=path.parent))
    try:
        tensors = {f"model.{k}": v.detach().cpu().contiguous()
                   for k, v in model.state_dict().items()}
        tensors.update({f"best.{k}": v for k, v in best_state.items()})
        if encoder is not None:
            tensors.update({f"encoder.{k}": v for k, v in encoder.net_state().items()})
        osd = opt.state_dict()
        for idx, st in osd["state"].items():
            for name, v in st.items():
                tensors[f"optim.{idx}.{name}"] = v.detach().cpu().contiguous()
        tensors["rng.torch"] = torch.get_rng_state()
        save_file(tensors, str(tmp / "state.safetensors"))
        write_json(tmp / "state.json", {**meta, "param_groups": osd["param_groups"]})
        make_readable(tmp)
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load_checkpoint(path: Path, model: ShowAndTell, opt: torch.optim.Optimizer,
                     encoder: Encoder | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    meta = json.loads((path / "state.json").read_text())
    tensors = load_file(str(path / "state.safetensors"))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
    if encoder is not None:
        encoder.graph.net.load_state_dict(
            {k[8:]: v for k, v in tensors.items() if k.startswith("encoder.")})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta.pop("param_groups")})
    torch.set_rng_state(tensors["rng.torch"])
    return meta, best


def model_card(cfg: TrainConfig, metrics: dict, n_train: int, n_dev: int) -> str:
    dev = metrics.get("dev", {})
    rows = "\n".join(f"| {k} | {v:.3f} |" for k, v in dev.items() if isinstance(v, float))
    return f"""# captioner model

Show and Tell (CNN encoder -> LSTM decoder) trained with captioner {__version__}.

- **Data**: {cfg.dataset_format} at `{cfg.dataset_path}`, split `{cfg.train_split}` \
({n_train} images); best epoch chosen on `{cfg.dev_split}` ({n_dev} images).
- **Encoder**: {cfg.encoder} (frozen, ImageNet weights), {get_spec(cfg.encoder).image_size} px.
- **Decoder**: embedding {cfg.embed_size}, LSTM {cfg.num_layers}x{cfg.hidden_size}, \
dropout {cfg.dropout}, vocabulary threshold {cfg.vocab_threshold}.
- **Training**: {cfg.epochs} epochs, batch {cfg.batch_size}, learning rate {cfg.learning_rate} \
({cfg.lr_schedule}), label smoothing {cfg.label_smoothing}, seed {cfg.seed}; \
best epoch {metrics.get('best_epoch')}; {metrics.get('train_seconds', 0) / 60:.1f} minutes.

## Dev-split scores (beam {cfg.beam_size}, pycocoevalcap)

| metric | value |
|---|---|
{rows}
"""


Callback = Callable[[dict], None]


def train(cfg: TrainConfig, out: Path, progress: bool = True, on_epoch: Callback | None = None,
          stop_after_epochs: int | None = None, data: Data | None = None,
          on_step: Callback | None = None) -> Path:
    """Train (or resume) a model; returns the bundle folder.

    `on_epoch` gets each metrics line and `on_step` each step's progress (epoch, step, loss,
    ETA) — the web app's job runner uses both; `stop_after_epochs` ends this call early as an
    interruption would (used by tests)."""
    out = Path(out)
    t0 = time.time()
    device = pick_device(cfg.device)
    data = data or prepare_data(cfg, progress)
    finetune = cfg.finetune_encoder
    encoder, tail = None, []
    if finetune:
        if progress:
            print("fine-tuning the encoder's last stage: images are encoded every step (no "
                  "feature cache) with random crops and flips; a GPU is strongly advised")
        encoder = Encoder(cfg.encoder, device, onnx=False)
        tail = encoder.trainable_tail()
    # Seed after data preparation: feature extraction may or may not run (cache) and its
    # DataLoader draws from the global RNG, which must not change the model's initialisation.
    torch.manual_seed(cfg.seed)
    feature_dim = encoder.spec.feature_dim if finetune else data.train_feats.shape[1]
    mcfg = ModelConfig(feature_dim=feature_dim, vocab_size=len(data.vocab),
                       embed_size=cfg.embed_size, hidden_size=cfg.hidden_size,
                       num_layers=cfg.num_layers, dropout=cfg.dropout)
    model = ShowAndTell(mcfg).to(device)
    groups = [{"params": list(model.parameters()), "lr_scale": 1.0}]
    if finetune:
        groups.append({"params": tail, "lr_scale": cfg.encoder_lr / cfg.learning_rate})
    opt = torch.optim.AdamW(groups, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    trained = [p for g in groups for p in g["params"]]
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=Vocabulary.pad_id,
                                        label_smoothing=cfg.label_smoothing)

    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint"
    log_path = out / "metrics.jsonl"
    start_epoch, best, best_state, history, elapsed = 0, None, {}, [], 0.0
    if (ckpt / "state.json").exists():
        meta = json.loads((ckpt / "state.json").read_text())
        if meta.get("fingerprint") != cfg.fingerprint():
            raise TrainingError(f"{out} holds a run with different settings; use another --out "
                                "or delete that folder to start over")
        meta, best_state = _load_checkpoint(ckpt, model, opt, encoder)
        start_epoch, best, history = meta["epoch"], meta["best"], meta["history"]
        elapsed = meta.get("elapsed", 0.0)
        if progress:
            print(f"resuming {out} after epoch {start_epoch}")
    if start_epoch == 0:
        log_path.unlink(missing_ok=True)  # a fresh run must not inherit an old log

    steps = count_batches(len(data.train_caps), cfg.batch_size)
    # All captions padded once; a batch is a row selection cut to its longest caption.
    lengths = torch.tensor([len(c) for _, c in data.train_caps])
    padded = torch.zeros(len(data.train_caps), int(lengths.max()), dtype=torch.long)
    for j, (_, c) in enumerate(data.train_caps):
        padded[j, :len(c)] = torch.tensor(c)
    image_of = torch.tensor([i for i, _ in data.train_caps])
    feats = data.train_feats
    dev_pixels = _dev_pixels(data, encoder) if finetune else None
    t_run, done_steps = time.time(), 0
    for epoch in range(start_epoch, cfg.epochs):
        if stop_after_epochs is not None and epoch - start_epoch >= stop_after_epochs:
            return out / "model"
        model.train()
        batches = epoch_batches(data.train_caps, cfg.batch_size, cfg.seed * 1000 + epoch)
        pixels = _augmented_batches(data, image_of, encoder, batches, cfg, epoch) if finetune \
            else itertools.repeat(None)  # cached features: no pixels to load
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step",
                   disable=not progress)
        total, t_epoch = 0.0, time.time()
        for s, (idx, px) in enumerate(zip(bar, pixels, strict=False)):
            rows = torch.tensor(idx)
            tokens = padded[rows, : int(lengths[rows].max())].to(device)
            for g in opt.param_groups:
                g["lr"] = learning_rate(cfg, epoch * steps + s, steps) * g.get("lr_scale", 1.0)
            # bf16 autocast on CUDA (no loss scaling needed); plain fp32 on CPU.
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                img = encoder.graph(px.to(device)) if finetune else _rows(feats, image_of[rows],
                                                                           device)
                logits = model(img, tokens[:, :-1])
                loss = loss_fn(logits.reshape(-1, logits.shape[-1]).float(),
                               tokens[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trained, cfg.grad_clip)
            opt.step()
            total += loss.item()
            bar.set_postfix(loss=f"{total / (s + 1):.3f}")
            if on_step:
                done_steps += 1
                rate = (time.time() - t_run) / done_steps
                left = (cfg.epochs - epoch) * steps - (s + 1)
                on_step({"epoch": epoch + 1, "epochs": cfg.epochs, "step": s + 1,
                         "steps": steps, "loss": total / (s + 1), "eta_s": round(left * rate)})
        if finetune:
            data.dev_feats = _encode(encoder, dev_pixels)
        scores = dev_scores(model, data, cfg)
        line = {"epoch": epoch + 1, "loss": total / steps, "lr": opt.param_groups[0]["lr"],
                "seconds": time.time() - t_epoch, **{f"dev_{k}": v for k, v in scores.items()}}
        history.append(line)
        if best is None or scores["CIDEr"] > best["CIDEr"]:
            best = {**scores, "epoch": epoch + 1}
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            if finetune:
                best_state.update({f"encoder.{k}": v.clone()
                                   for k, v in encoder.net_state().items()})
        with log_path.open("a") as fh:
            fh.write(json.dumps(line) + "\n")
        if progress:
            left = (cfg.epochs - epoch - 1) * (time.time() - t_epoch)
            print(f"epoch {epoch + 1}: loss {line['loss']:.3f}  dev BLEU-4 {scores['BLEU-4']:.3f}"
                  f"  CIDEr {scores['CIDEr']:.3f}  (best CIDEr {best['CIDEr']:.3f}, "
                  f"epoch {best['epoch']})  ~{left / 60:.0f} min left", flush=True)
        if on_epoch:
            on_epoch(line)
        elapsed_now = elapsed + time.time() - t0
        _save_checkpoint(ckpt, model, opt, best_state, {
            "epoch": epoch + 1, "best": best, "history": history, "elapsed": elapsed_now,
            "fingerprint": cfg.fingerprint()}, encoder)

    encoder_state = None
    if finetune:
        encoder_state = {k[8:]: v for k, v in best_state.items() if k.startswith("encoder.")}
        encoder.graph.net.load_state_dict(encoder_state)
        data.dev_feats = _encode(encoder, dev_pixels)
    model.load_state_dict({k: v for k, v in best_state.items() if not k.startswith("encoder.")})
    model.eval()
    metrics = {"dev": final_scores(model, data, cfg), "best_epoch": best["epoch"],
               "dev_split": cfg.dev_split, "beam_size": cfg.beam_size,
               "train_seconds": round(elapsed + time.time() - t0, 1), "history": history}
    bundle = Bundle(model, data.vocab, cfg.encoder,
                    {"beam_size": cfg.beam_size, "max_len": cfg.max_len,
                     "length_penalty": cfg.length_penalty},
                    cfg.model_dump(mode="json"), metrics, encoder_state=encoder_state)
    card = model_card(cfg, metrics, int(image_of.max()) + 1, len(data.dev_records))
    save_bundle(out / "model", bundle, card)
    return out / "model"


def _rows(feats: np.ndarray | torch.Tensor, idx: torch.Tensor, device: torch.device
          ) -> torch.Tensor:
    if isinstance(feats, torch.Tensor):
        return feats[idx].float().to(device)
    return torch.from_numpy(np.asarray(feats[idx.numpy()], dtype=np.float32)).to(device)


# --- encoder fine-tuning: images instead of cached features ------------------------------------

class _Augmented(Dataset):
    """Caption index -> a randomly cropped and flipped view of its image (uint8 HWC)."""

    def __init__(self, paths: list[Path], image_of: list[int], size: int) -> None:
        self.paths, self.image_of, self.size = paths, image_of, size

    def __len__(self) -> int:
        return len(self.image_of)

    def __getitem__(self, i: int) -> np.ndarray:
        return augment(open_image(self.paths[self.image_of[i]], self.size), self.size)


def _augmented_batches(data: Data, image_of: torch.Tensor, encoder: Encoder,
                       batches: list[list[int]], cfg: TrainConfig, epoch: int):
    dataset = _Augmented(data.train_images, image_of.tolist(), encoder.spec.image_size)
    return iter(DataLoader(dataset, batch_sampler=batches, num_workers=cfg.workers,
                           collate_fn=_stack,
                           generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch)))


def _dev_pixels(data: Data, encoder: Encoder) -> torch.Tensor:
    size = encoder.spec.image_size
    return torch.from_numpy(np.stack([encoder.preprocess(open_image(r.image, size))
                                      for r in data.dev_records]))


@torch.no_grad()
def _encode(encoder: Encoder, pixels: torch.Tensor, batch: int = 64) -> torch.Tensor:
    device = encoder.graph.mean.device
    return torch.cat([encoder.graph(pixels[i:i + batch].to(device)).float().cpu()
                      for i in range(0, len(pixels), batch)])
