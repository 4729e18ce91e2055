"""Hyper-parameter sweep on cached features (used to choose the default model's recipe).

    python bench/sweep.py export --data ../shared/data/flickr8k --out sweep_data
    python bench/sweep.py run --data sweep_data --grid bench/grid.json --parallel 8 --device cuda

`export` writes features + captions (Flickr8k train/dev and the two out-of-domain COCO sets,
for every `--encoder`) so the sweep can run on another machine (e.g. a GPU box without the
images); `run` trains every grid entry (a list of TrainConfig overrides; `encoder` picks the
exported features) in parallel processes and prints dev scores for beam 3 at several length
penalties, the out-of-domain CIDEr-D and the dev CIDEr-D of every epoch.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from captioner.config import TrainConfig  # noqa: E402
from captioner.data.datasets import Record, load_dataset  # noqa: E402
from captioner.data.vocab import Vocabulary  # noqa: E402
from captioner.decoders.pipeline import caption_features  # noqa: E402
from captioner.evaluation.metrics import score_records  # noqa: E402
from captioner.storage.bundle import load_bundle  # noqa: E402
from captioner.training.sources import Data  # noqa: E402
from captioner.training.trainer import train  # noqa: E402
from captioner.vision.features import extract_features  # noqa: E402

OOD = {"coco_person": ("coco-person-dev", "val"), "coco_mini": ("coco-mini", "val")}


def export(args: argparse.Namespace) -> None:
    out = Path(args.out)
    shared = Path(args.data).parent
    sets = {s: ("flickr8k", Path(args.data), s) for s in ("train", "dev")}
    sets.update({k: ("coco", shared / d, split) for k, (d, split) in OOD.items()})
    for encoder in args.encoder.split(","):
        (out / encoder).mkdir(parents=True, exist_ok=True)
        for name, (fmt, path, split) in sets.items():
            recs = load_dataset(fmt, path, split)
            if name == "coco_mini":  # all 159 photos: train2017 and val2017 slices
                recs += load_dataset(fmt, path, "train")
            feats = extract_features([r.image for r in recs], encoder, workers=args.workers)
            np.save(out / encoder / f"{name}_feats.npy", np.asarray(feats))
            (out / f"{name}.json").write_text(json.dumps([list(r.captions) for r in recs]))
    print("exported to", out)


def load(folder: Path, encoder: str, threshold: int, max_len: int) -> tuple[Data, dict]:
    caps = {s: json.loads((folder / f"{s}.json").read_text()) for s in ("train", "dev", *OOD)}
    vocab = Vocabulary.build((c for cs in caps["train"] for c in cs), threshold)
    train_caps = [
        (i, vocab.encode(c)[: max_len + 2]) for i, cs in enumerate(caps["train"]) for c in cs
    ]
    recs = {
        s: [Record(Path(f"{s}{i}"), tuple(cs)) for i, cs in enumerate(caps[s])]
        for s in ("dev", *OOD)
    }
    f = {
        s: torch.from_numpy(np.load(folder / encoder / f"{s}_feats.npy").astype(np.float32))
        for s in ("train", "dev", *OOD)
    }
    refs = [tuple(cs) for cs in caps["train"]]
    data = Data(vocab, f["train"], train_caps, f["dev"], recs["dev"], [], refs)
    return data, {s: (f[s], recs[s]) for s in OOD}


def run_one(job: tuple[int, dict, str, str]) -> dict:
    i, overrides, data_dir, out_dir = job
    torch.set_num_threads(1 if overrides.get("device") == "cuda" else 2)
    cfg = TrainConfig(dataset_path=Path(data_dir), **overrides)
    data, ood = load(Path(data_dir), cfg.encoder, cfg.vocab_threshold, cfg.max_len)
    t0 = time.time()
    path = train(cfg, Path(out_dir) / f"run{i}", data=data)
    b = load_bundle(path, cfg.device if cfg.device != "auto" else "cpu")
    result = {
        "id": i,
        "cfg": overrides,
        "seconds": round(time.time() - t0),
        "best_epoch": b.metrics["best_epoch"],
        "dev_cider_per_epoch": [round(h["dev_CIDEr"], 3) for h in b.metrics["history"]],
    }
    for name, (feats, recs) in ood.items():
        caps = caption_features(b.model, data.vocab, feats, cfg.decode)
        result[name] = round(score_records(recs, caps, ("cider",), "simple")["CIDEr"], 3)
    for lp in (0.0, 0.5, 1.0, 1.5):
        decode = cfg.decode.resolve(beam_size=3, length_penalty=lp)
        caps = caption_features(b.model, data.vocab, data.dev_feats, decode)
        s = score_records(data.dev_records, caps, ("bleu", "cider"))
        result[f"lp{lp}"] = {
            "B1": round(s["BLEU-1"], 3),
            "B4": round(s["BLEU-4"], 3),
            "C": round(s["CIDEr"], 3),
            "len": round(s["mean_length"], 2),
        }
    print(json.dumps(result), flush=True)
    return result


def run(args: argparse.Namespace) -> None:
    grid = json.loads(Path(args.grid).read_text())
    base = {"device": args.device}
    jobs = [(i, {**base, **g}, args.data, args.out) for i, g in enumerate(grid)]
    ctx = multiprocessing.get_context("spawn")  # CUDA cannot be used in forked children
    with ProcessPoolExecutor(args.parallel, mp_context=ctx) as pool:
        results = list(pool.map(run_one, jobs))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps(results, indent=1))


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export")
    e.add_argument("--data", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--encoder", default="efficientnet_lite0", help="comma-separated")
    e.add_argument("--workers", type=int, default=1)
    r = sub.add_parser("run")
    r.add_argument("--data", required=True)
    r.add_argument("--grid", required=True)
    r.add_argument("--out", default="sweep_out")
    r.add_argument("--parallel", type=int, default=1)
    r.add_argument("--device", default="cpu")
    args = p.parse_args()
    export(args) if args.cmd == "export" else run(args)


if __name__ == "__main__":
    main()
