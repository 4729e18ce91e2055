"""Cost of each encoder for feature extraction and captioning: ms per image to decode + resize
(PIL) and to run the CNN (onnxruntime when installed), pooled and grid, and with horizontal-flip
averaging (a second CNN pass per image). Encoders take turns on the same photos, so a busy
machine slows them alike; compare the ratios.

    python bench/encoder_cost.py --n 64 --runs 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from captioner.vision.encoders import Encoder  # noqa: E402
from captioner.vision.images import open_image  # noqa: E402

ENCODERS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def dev_images(root: Path, n: int) -> list[Path]:
    names = (root / "Flickr_8k.devImages.txt").read_text().split()[:n]
    return [root / "images" / name for name in names]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=Path, default=Path("../shared/data/flickr8k"))
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    images = dev_images(args.images, args.n)
    encoders = {(e, g): Encoder(e, grid=g) for e in ENCODERS for g in (False, True)}
    times: dict[tuple, list[float]] = {}
    for _ in range(args.runs):
        for (name, grid), enc in encoders.items():
            t0 = time.perf_counter()
            pixels = np.stack([enc.preprocess(open_image(i, enc.spec.image_size)) for i in images])
            t1 = time.perf_counter()
            with torch.inference_mode():
                for b in range(0, len(pixels), 32):
                    enc(torch.from_numpy(pixels[b : b + 32]))
            t2 = time.perf_counter()
            with torch.inference_mode():  # the flipped copy: the extra pass flip averaging costs
                for b in range(0, len(pixels), 32):
                    enc(torch.from_numpy(np.ascontiguousarray(pixels[b : b + 32, :, ::-1])))
            t3 = time.perf_counter()
            ms = [(t1 - t0), (t2 - t1), (t2 - t0), (t3 - t0)]
            times.setdefault((name, grid), []).append([x * 1000 / len(images) for x in ms])
    print("| encoder | px | output | decode+resize ms | CNN ms | features ms | with flip ms |")
    print("|---|---|---|---|---|---|---|")
    for (name, grid), rows in times.items():
        med = [statistics.median(col) for col in zip(*rows, strict=True)]
        size = encoders[name, grid].spec.image_size
        kind = "grid" if grid else "pooled"
        print(f"| {name} | {size} | {kind} | " + " | ".join(f"{m:.1f}" for m in med) + " |")


if __name__ == "__main__":
    main()
