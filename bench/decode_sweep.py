"""Decoding settings of one model on Flickr8k dev (and the two out-of-domain COCO sets, never
tuned on): beam size x length penalty x repetition guard x class guidance x consensus reranking
(neighbours, weight, precision) x neighbour guidance, scored with BLEU and CIDEr-D (captioner's
tokenizer, ~0.001 from PTB).
Features come from the cache, so each setting costs only its decoding.

    python bench/decode_sweep.py                       # the bundled model
    python bench/decode_sweep.py runs/x/model --beam-size 1 3 5 --length-penalty 0 1 2
    python bench/decode_sweep.py --beam-size 5 --length-penalty 1 --repetition-penalty 2 \
        --class-guidance 1 --rerank-neighbours 0 10 15 20 30 --rerank-weight 0.25 0.5 0.75
    python bench/decode_sweep.py --beam-size 5 --length-penalty 1 --repetition-penalty 2 \
        --class-guidance 1 --rerank-neighbours 15 --rerank-precision 0 0.2 0.4 \
        --neighbour-guidance 0 1 1.5

Choose on dev; the out-of-domain column only warns when a setting overfits Flickr8k's style.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from captioner import Captioner  # noqa: E402
from captioner.data.datasets import load_dataset  # noqa: E402
from captioner.decoders.pipeline import caption_features  # noqa: E402
from captioner.evaluation.metrics import score_records  # noqa: E402
from captioner.vision.features import extract_features  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", default=None)
    p.add_argument("--data", type=Path, default=Path("../shared/data"))
    p.add_argument("--beam-size", type=int, nargs="*", default=[1, 2, 3, 5])
    p.add_argument("--length-penalty", type=float, nargs="*", default=[0.0, 0.5, 1.0, 1.5])
    p.add_argument("--repetition-penalty", type=float, nargs="*", default=[0.0, 2.0])
    p.add_argument("--class-guidance", type=float, nargs="*", default=[0.0])
    p.add_argument("--rerank-neighbours", type=int, nargs="*", default=[0])
    p.add_argument("--rerank-weight", type=float, nargs="*", default=[0.5])
    p.add_argument("--rerank-precision", type=float, nargs="*", default=[0.0])
    p.add_argument("--neighbour-guidance", type=float, nargs="*", default=[0.0])
    args = p.parse_args()
    cap = Captioner.load(args.model)
    sets = {
        "dev": load_dataset("flickr8k", args.data / "flickr8k", "dev"),
        "person": load_dataset("coco", args.data / "coco-person-dev", "val"),
        "mini": load_dataset("coco", args.data / "coco-mini", "val")
        + load_dataset("coco", args.data / "coco-mini", "train"),
    }
    feats = {
        k: torch.from_numpy(
            np.asarray(extract_features([r.image for r in v], cap.encoder), dtype=np.float32)
        )
        for k, v in sets.items()
    }
    cols = ["beam", "lp", "rep", "guide", "k", "w", "prec", "nguide"]
    cols += ["B1", "B4", "CIDEr", "len"]
    cols += ["person_CIDEr", "mini_CIDEr"]
    print(" ".join(f"{c:>12}" for c in cols), flush=True)
    grid = itertools.product(
        args.beam_size,
        args.length_penalty,
        args.repetition_penalty,
        args.class_guidance,
        args.rerank_neighbours,
        args.rerank_weight,
        args.rerank_precision,
        args.neighbour_guidance,
    )
    for beam, lp, rep, guide, near, weight, prec, nguide in grid:
        decode = cap.decoding.resolve(
            beam_size=beam,
            length_penalty=lp,
            repetition_penalty=rep,
            class_guidance=guide,
            rerank_neighbours=near,
            rerank_weight=weight,
            rerank_precision=prec,
            neighbour_guidance=nguide,
        )
        row = [beam, lp, rep, guide, near, weight, prec, nguide]
        for k in ("dev", "person", "mini"):
            caps = caption_features(
                cap.bundle.model, cap.vocab, feats[k], decode, neighbours=cap.bundle.neighbours
            )
            s = score_records(sets[k], caps, ("bleu", "cider"), tokenizer="simple")
            if k == "dev":
                row += [s["BLEU-1"], s["BLEU-4"], s["CIDEr"], s["mean_length"]]
            else:
                row.append(s["CIDEr"])
        print(" ".join(f"{v:>12.4g}" for v in row), flush=True)


if __name__ == "__main__":
    main()
