"""Quality of a model on Flickr8k dev: greedy and beam 3, all pycocoevalcap metrics.

    python bench/quality.py [--model DIR] [--data ../shared/data/flickr8k]

Targets for the bundled model (issue 2): beam 3 BLEU-4 >= 0.17, CIDEr >= 0.42, BLEU-1 >= 0.58.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from captioner import Captioner  # noqa: E402
from captioner.data.datasets import load_dataset  # noqa: E402
from captioner.evaluation.evaluate import evaluate_model  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=None)
    p.add_argument("--data", default="../shared/data/flickr8k")
    p.add_argument("--split", default="dev")
    args = p.parse_args()
    cap = Captioner.load(args.model)
    records = load_dataset("flickr8k", args.data, args.split)
    rows = {}
    for name, beam in (("greedy", 1), ("beam 3", 3)):
        print(f"== {name}", flush=True)
        rows[name] = evaluate_model(cap, records, cap.decoding.resolve(beam_size=beam))
    keys = list(rows["beam 3"]["metrics"])
    print("\n| decoding | " + " | ".join(keys) + " | mean length |")
    print("|---" * (len(keys) + 2) + "|")
    for name, r in rows.items():
        vals = " | ".join(f"{r['metrics'][k]:.3f}" for k in keys)
        print(f"| {name} | {vals} | {r['mean_length']:.2f} |")
    print(f"reference mean length: {rows['beam 3']['reference_mean_length']:.2f} words")


if __name__ == "__main__":
    main()
