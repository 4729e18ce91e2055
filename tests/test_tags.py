"""Tags name what is in real photos: COCO photos whose five captions all mention a thing get
that thing among the encoder's top ImageNet classes (ImageNet has zebra, pizza and several
buses; it has no giraffe, and COCO's cats are mostly on laptops and sofas, so those are left
out)."""

from __future__ import annotations

import json

from conftest import COCO, needs_coco

from captioner import Captioner

BUSES = {"trolleybus", "school bus", "minibus", "streetcar", "passenger car"}
EXPECTED = {"zebra": {"zebra"}, "pizza": {"pizza"}, "bus": BUSES}


def photos_all_captions_mention(word: str) -> list:
    data = json.loads((COCO / "annotations" / "captions_val2017.json").read_text())
    captions: dict[int, list[str]] = {}
    for a in data["annotations"]:
        captions.setdefault(a["image_id"], []).append(a["caption"].lower())
    return [
        COCO / "val2017" / im["file_name"]
        for im in data["images"]
        if len(captions.get(im["id"], [])) >= 5
        and all(f" {word}" in f" {c}" for c in captions[im["id"]])
    ]


@needs_coco
def test_tags_of_real_photos_name_what_is_in_them():
    cap = Captioner.load()
    for word, labels in EXPECTED.items():
        photos = photos_all_captions_mention(word)
        assert photos, f"no COCO photo whose captions all say {word!r}"
        found = cap.describe(photos, tags=2, tag_threshold=0.0)
        tops = [[t.label for t in d.tags] for d in found]
        # Every such photo has the thing in its two top classes (a broccoli pizza is
        # "broccoli" first), and most have it first.
        assert all(labels & set(top) for top in tops), (word, tops)
        assert sum(top[0] in labels for top in tops) * 2 >= len(tops), (word, tops)
