"""Caption quality of candidate models, one table: Flickr8k dev (all pycocoevalcap metrics), the
two out-of-domain COCO sets (CIDEr-D), mean caption length, training minutes, ms per caption.

    python bench/quality.py                          # the bundled model
    python bench/quality.py runs/a/model runs/b/model --beam-size 1 3
    python bench/quality.py --data ../shared/data    # holds flickr8k/, coco-person-dev/, coco-mini/

Every figure in a model card can be re-run from here. Out-of-domain sets are never trained on.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from captioner import Captioner  # noqa: E402
from captioner.data.datasets import load_dataset  # noqa: E402
from captioner.evaluation.evaluate import evaluate_model  # noqa: E402

METRICS = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"]


def ms_per_caption(cap: Captioner, images: list[Path], decode, repeats: int = 3) -> float:
    """Median over repeats of the time to caption `images` from files, in ms per image."""
    cap.caption(images[:8], decode=decode)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        cap.caption(images, decode=decode)
        times.append((time.perf_counter() - t) * 1000 / len(images))
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="*", help="model folders (default: the bundled model)")
    p.add_argument("--data", type=Path, default=Path("../shared/data"))
    p.add_argument(
        "--beam-size",
        type=int,
        nargs="*",
        default=[None],
        help="beam sizes to score (default: each model's own)",
    )
    p.add_argument("--speed-images", type=int, default=100)
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = p.parse_args()
    dev = load_dataset("flickr8k", args.data / "flickr8k", "dev")
    person = load_dataset("coco", args.data / "coco-person-dev", "val")
    mini = load_dataset("coco", args.data / "coco-mini", "val")
    mini += load_dataset("coco", args.data / "coco-mini", "train")
    rows = []
    for model in args.models or [None]:
        cap = Captioner.load(model)
        name = str(model or "bundled")
        for beam in args.beam_size:
            decode = cap.decoding.resolve(beam_size=beam)
            print(f"== {name}, beam {decode.beam_size}", file=sys.stderr, flush=True)
            d = evaluate_model(cap, dev, decode)
            row = {
                "model": name,
                "beam": decode.beam_size,
                **d["metrics"],
                "length": d["mean_length"],
                "ref_length": d["reference_mean_length"],
                "objects": {"flickr8k_dev": d["objects"]},
            }
            for key, records in (("coco_person", person), ("coco_mini", mini)):
                e = evaluate_model(cap, records, decode)
                row[f"{key}_CIDEr"] = e["metrics"]["CIDEr"]
                row["objects"][key] = e["objects"]
            row["train_min"] = cap.bundle.metrics.get("train_seconds", 0) / 60
            row["ms_per_caption"] = ms_per_caption(
                cap, [r.image for r in dev[: args.speed_images]], decode
            )
            rows.append(row)
    cols = [
        "model",
        "beam",
        *METRICS,
        "length",
        "coco_person_CIDEr",
        "coco_mini_CIDEr",
        "train_min",
        "ms_per_caption",
    ]
    print("| " + " | ".join(cols) + " |")
    print("|---" * len(cols) + "|")
    for r in rows:
        cells = [r[c] if isinstance(r[c], str | int) else f"{r[c]:.3f}" for c in cols[: 2 + 8]]
        cells += [f"{r[c]:.3f}" for c in cols[10:12]]
        cells += [f"{r['train_min']:.1f}", f"{r['ms_per_caption']:.1f}"]
        print("| " + " | ".join(map(str, cells)) + " |")
    print(f"references: {rows[0]['ref_length']:.2f} words on average (Flickr8k dev)")
    print("\nObject mentions (COCO's categories but person; positive when >= 2 references name")
    print("it) and contradictions (a caption's animal/vehicle/food against a confident tag):\n")
    print("| model | set | precision | recall | F1 | positives | contradictions | lowest recall |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        for key, o in r["objects"].items():
            low = ", ".join(f"{g} {tp}/{n}" for g, tp, n in o["lowest_recall"][:5])
            print(
                f"| {r['model']} | {key} | {o['precision']:.3f} | {o['recall']:.3f} | "
                f"{o['f1']:.3f} | {o['positives']} | {o['contradictions']:.1%} | {low} |"
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
