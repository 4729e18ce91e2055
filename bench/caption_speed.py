"""Captioning speed of a model (default: the bundled one): ms per image after load, and
seconds from launch to the first caption.

    python bench/caption_speed.py --images ../shared/data/flickr8k --n 100 --runs 3 [--model DIR]
    python bench/caption_speed.py --baseline OLD_MODEL_DIR --runs 7   # ratio, interleaved runs

Start-up is measured as a user sees it: a fresh `captioner caption ONE.jpg` process, from
launch to its first output line (median of --runs). Throughput captions --n dev photos with
beam 3 in one loaded process, --runs times; reports the median ms/image. With --baseline, the
two models take turns on the same photos (so a busy machine slows both alike) and the ratio of
medians is printed.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def dev_images(root: Path, n: int) -> list[Path]:
    names = (root / "Flickr_8k.devImages.txt").read_text().split()[:n]
    return [root / "images" / name for name in names]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=Path, default=Path("../shared/data/flickr8k"))
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--beam-size", type=int, default=3)
    p.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    p.add_argument("--baseline", default=None, help="another model folder to compare against")
    args = p.parse_args()
    if args.baseline:
        return compare(args)
    model = ["--model", args.model] if args.model else []
    images = dev_images(args.images, args.n)

    startups = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "captioner", "caption", str(images[0]), *model],
            stdout=subprocess.PIPE,
            text=True,
        )
        first = proc.stdout.readline()
        startups.append(time.perf_counter() - t0)
        proc.wait()
        assert first.strip(), "no caption printed"
    print(
        f"start-up to first caption: median {statistics.median(startups):.2f} s "
        f"(runs: {', '.join(f'{s:.2f}' for s in startups)})"
    )

    from captioner import Captioner

    t0 = time.perf_counter()
    cap = Captioner.load(args.model)
    print(f"model load in-process: {time.perf_counter() - t0:.2f} s")
    cap.caption(images[:4], beam_size=args.beam_size)  # warm-up
    per_image = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        captions = cap.caption(images, beam_size=args.beam_size)
        per_image.append((time.perf_counter() - t0) / len(images) * 1000)
    print(
        f"{len(images)} images, beam {args.beam_size}: median {statistics.median(per_image):.1f}"
        f" ms/image (runs: {', '.join(f'{x:.1f}' for x in per_image)})"
    )
    for path, caption in list(zip(images, captions, strict=True))[:5]:
        print(f"  {path.name}: {caption}")


def compare(args: argparse.Namespace) -> None:
    from captioner import Captioner

    images = dev_images(args.images, args.n)
    models = {"model": Captioner.load(args.model), "baseline": Captioner.load(args.baseline)}
    times: dict[str, list[float]] = {k: [] for k in models}
    for cap in models.values():
        cap.caption(images[:4])  # warm-up, each with its own decoding settings
    for _ in range(args.runs):
        for name, cap in models.items():
            t0 = time.perf_counter()
            cap.caption(images)
            times[name].append((time.perf_counter() - t0) / len(images) * 1000)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"{k}: median {med[k]:.1f} ms/image (runs: {', '.join(f'{x:.1f}' for x in v)})")
    print(f"ratio model/baseline: {med['model'] / med['baseline']:.2f}")


if __name__ == "__main__":
    main()
