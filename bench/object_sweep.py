"""Decoding settings against object naming: CIDEr-D (captioner's tokenizer), object-mention
precision/recall/F1 and contradictions with the tags, on Flickr8k dev, coco-person-dev and
coco-mini, from cached features (the model card's object-naming table).

    python bench/object_sweep.py --data ../shared/data \\
        'previous={"open_vocabulary": false, "class_constraint": 0, "tag_agreement": false}' \\
        'shipped={}'

Each argument is NAME=JSON: decoding settings changed from the model's own.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from captioner import Captioner  # noqa: E402
from captioner.data.datasets import load_dataset  # noqa: E402
from captioner.decoders.pipeline import caption_features  # noqa: E402
from captioner.evaluation.metrics import score_records  # noqa: E402
from captioner.evaluation.objects import contradicts, mention_scores  # noqa: E402
from captioner.vision.features import extract_features  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("settings", nargs="+", help="NAME=JSON decoding overrides")
    p.add_argument("--data", type=Path, default=Path("../shared/data"))
    p.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    args = p.parse_args()
    sets = {
        "dev": load_dataset("flickr8k", args.data / "flickr8k", "dev"),
        "person": load_dataset("coco", args.data / "coco-person-dev", "val"),
        "mini": load_dataset("coco", args.data / "coco-mini", "val")
        + load_dataset("coco", args.data / "coco-mini", "train"),
    }
    cap = Captioner.load(args.model)
    feats, tags = {}, {}
    for k, recs in sets.items():
        f = extract_features([r.image for r in recs], cap.encoder)
        feats[k] = torch.from_numpy(np.asarray(f, dtype=np.float32))
        tags[k] = [t for i in range(0, len(f), 256) for t in cap.tags_of(feats[k][i : i + 256])]
    for spec in args.settings:
        name, _, given = spec.partition("=")
        decode = cap.decoding_for(**json.loads(given or "{}"))
        t0, cells = time.time(), [name]
        for k, recs in sets.items():
            caps = caption_features(
                cap.bundle.model, cap.vocab, feats[k], decode, neighbours=cap.bundle.neighbours
            )
            cider = score_records(recs, caps, ("cider",), tokenizer="simple")["CIDEr"]
            o = mention_scores(caps, [r.captions for r in recs])
            pairs = zip(caps, tags[k], strict=True)
            bad = sum(contradicts(c, [(t.label, t.probability) for t in ts]) for c, ts in pairs)
            cells.append(
                f"{k}: CIDEr-D {cider:.3f} P {o['precision']:.3f} R {o['recall']:.3f} "
                f"F1 {o['f1']:.3f} contradictions {bad / len(caps):.1%}"
            )
        print(" | ".join(cells), f"({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
