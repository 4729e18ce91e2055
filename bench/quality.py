"""Quality of a model on Flickr8k dev: greedy and beam 3, all pycocoevalcap metrics.

    python bench/quality.py [--model DIR] [--data ../shared/data/flickr8k]

Targets for the bundled model (issue 2): beam 3 BLEU-4 >= 0.17, CIDEr >= 0.42, BLEU-1 >= 0.58.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from captioner.cli import main as cli  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=None)
    p.add_argument("--data", default="../shared/data/flickr8k")
    p.add_argument("--split", default="dev")
    args = p.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, beam in (("greedy", "1"), ("beam 3", "3")):
            report = Path(tmp) / f"{beam}.json"
            argv = ["evaluate", "--data", args.data, "--split", args.split, "--beam-size", beam,
                    "--report", str(report)] + (["--model", args.model] if args.model else [])
            print(f"== {name}")
            if cli(argv):
                sys.exit(1)
            rows[name] = json.loads(report.read_text())
    keys = list(rows["beam 3"]["metrics"])
    print("\n| decoding | " + " | ".join(keys) + " | mean length |")
    print("|---" * (len(keys) + 2) + "|")
    for name, r in rows.items():
        vals = " | ".join(f"{r['metrics'][k]:.3f}" for k in keys)
        print(f"| {name} | {vals} | {r['mean_length']:.2f} |")
    print(f"reference mean length: {rows['beam 3']['reference_mean_length']:.2f} words")


if __name__ == "__main__":
    main()
