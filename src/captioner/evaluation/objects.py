"""Object mentions: does a caption name what people name in the photo, and does it contradict
what the encoder's own classifier sees?

Groups (vision/object_groups.py) cover COCO's 80 categories with the words people use for them
(plurals, synonyms, two-word names such as "hot dog"). A photo is positive for a group when at
least MIN_REFS of its references name it; a caption's mention is right when the photo is
positive for it. Micro precision, recall and F1 over (photo, group) pairs; `person` is
reported apart, since nearly every caption of a photo with people names them and that would
drown the other objects.

A contradiction: the caption names an animal, vehicle or food group that no tag supports, while
a tag of probability >= CONFIDENT names a different group of the same kind (a zebra tagged 0.86,
captioned "a black and white dog").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from ..vision.object_groups import GROUPS, KINDS_CHECKED, class_groups, groups_in

MIN_REFS = 2
CONFIDENT = 0.5


def positives(references: Sequence[str], min_refs: int = MIN_REFS) -> set[str]:
    counts = Counter(g for ref in references for g in groups_in(ref))
    return {g for g, n in counts.items() if n >= min_refs}


def mention_scores(
    captions: Sequence[str], references: Sequence[Sequence[str]], worst: int = 8
) -> dict:
    """Micro precision/recall/F1 of object mentions (every group but person), person's apart,
    and the groups with the lowest recall (with at least 5 positive photos)."""
    tp, fp, fn = Counter(), Counter(), Counter()
    for cap, refs in zip(captions, references, strict=True):
        said, truth = groups_in(cap), positives(refs)
        for g in said | truth:
            if g in said and g in truth:
                tp[g] += 1
            elif g in said:
                fp[g] += 1
            else:
                fn[g] += 1

    def prf(groups) -> dict[str, float]:
        t, p, n = (sum(c[g] for g in groups) for c in (tp, fp, fn))
        precision = t / (t + p) if t + p else 0.0
        recall = t / (t + n) if t + n else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"precision": precision, "recall": recall, "f1": f1, "positives": t + n}

    objects = [g for g in GROUPS if g != "person"]
    recall = {g: tp[g] / (tp[g] + fn[g]) for g in objects if tp[g] + fn[g] >= 5}
    lowest = sorted(recall, key=lambda g: (recall[g], -(tp[g] + fn[g])))[:worst]
    return {
        **prf(objects),
        "person": prf(["person"]),
        "lowest_recall": [(g, tp[g], tp[g] + fn[g]) for g in lowest],
    }


def contradicts(caption: str, tags: Sequence[tuple[str, float]]) -> bool:
    """The caption names an animal/vehicle/food group no tag supports, while a confident tag
    names another group of the same kind. `tags`: (ImageNet label, probability)."""
    groups = class_groups()
    supported = {g for label, _ in tags for g in groups.get(label, ())}
    confident = {g for label, p in tags if p >= CONFIDENT for g in groups.get(label, ())}
    for g in groups_in(caption):
        kind = GROUPS[g][0]
        if kind not in KINDS_CHECKED or g in supported:
            continue
        if any(GROUPS[c][0] == kind and c != g for c in confident):
            return True
    return False
