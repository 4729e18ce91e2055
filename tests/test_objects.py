"""Object mentions and contradictions (evaluation/objects.py, vision/object_groups.py), the
decoding parts that act on them, and real COCO photos whose captions must name what they show."""

from __future__ import annotations

import pytest
import torch
from conftest import COCO, needs_coco

from captioner.evaluation.objects import contradicts, mention_scores, positives
from captioner.vision.object_groups import GROUPS, class_groups, groups_in


def test_groups_read_two_word_names_first_and_cover_cocos_categories():
    assert len(GROUPS) == 80 and "person" in GROUPS
    assert groups_in("a teddy bear on a bed beside two hot dogs") == {
        "teddy bear",
        "bed",
        "hot dog",
    }
    assert groups_in("a bear and a dog") == {"bear", "dog"}
    assert groups_in("an orange cat") == {"cat"}  # the colour is not the fruit
    assert class_groups()["zebra"] == {"zebra"} and class_groups()["cab"] == {"car"}


def test_mentions_count_what_two_references_name():
    refs = [
        ["a zebra in a field", "two zebras graze", "a horse-like animal"],
        ["a man on a bike", "a cyclist rides a bicycle", "a man rides down a road"],
    ]
    assert positives(refs[0]) == {"zebra"} and positives(refs[1]) == {"person", "bicycle"}
    s = mention_scores(["a black and white dog in a field", "a man rides a bike"], refs)
    # dog is wrong, bicycle right, zebra missed; person is counted apart.
    assert (s["precision"], s["recall"]) == (0.5, 0.5) and s["person"]["recall"] == 1.0


def test_a_caption_contradicts_a_confident_tag_of_the_same_kind_only():
    assert contradicts("a black and white dog running", [("zebra", 0.86)])
    assert not contradicts("a zebra running", [("zebra", 0.86)])
    assert not contradicts("a dog running", [("zebra", 0.3)])  # not confident
    assert not contradicts("a man on a bench", [("zebra", 0.9)])  # another kind
    assert not contradicts("a dog near a zebra", [("zebra", 0.9), ("Chihuahua", 0.12)])


def test_tag_agreement_bans_the_contradicting_words():
    from captioner.data.vocab import Vocabulary
    from captioner.decoders.adjusters import BannedWords, contradicting_words
    from captioner.vision.class_words import class_names

    vocab = Vocabulary(["<pad>", "<start>", "<end>", "<unk>", "a", "dog", "zebra", "man", "car"])

    class Head:
        def class_probabilities(self, features):
            probs = torch.full((2, 1000), 1e-4)
            probs[0, class_names().index("zebra")] = 0.9  # sure of a zebra
            probs[1, class_names().index("zebra")] = 0.3  # not sure of anything
            return probs

    banned = contradicting_words(Head(), vocab, torch.zeros(2, 4))
    assert banned[0].nonzero().flatten().tolist() == [vocab.stoi["dog"]]
    assert not banned[1].any()
    scores = torch.zeros(4, len(vocab.itos))  # 2 hypotheses per image
    out = BannedWords(banned)(scores, torch.zeros_like(scores, dtype=torch.bool))
    assert out[:2, vocab.stoi["dog"]].eq(float("-inf")).all() and out[2:].eq(0).all()


@needs_coco
@pytest.mark.slow
def test_real_coco_photos_are_named_by_their_captions():
    """coco-mini photos of zebras, teddy bears, pizza, trains and elephants that the encoder's
    classifier recognises: the bundled model's captions name them (no giraffe: ImageNet has
    no giraffe class, so nothing in the model can know the word)."""
    from captioner import Captioner
    from captioner.data.datasets import load_dataset

    cap = Captioner.load()
    records = load_dataset("coco", COCO, "val") + load_dataset("coco", COCO, "train")
    wanted = {"zebra", "teddy bear", "pizza", "train", "elephant"}
    chosen = [r for r in records if positives(r.captions) & wanted]
    found = cap.describe([r.image for r in chosen])
    named, shown = 0, 0
    for r, d in zip(chosen, found, strict=True):
        group = next(iter(positives(r.captions) & wanted))
        sure = {g for t in d.tags if t.probability >= 0.5 for g in class_groups()[t.label]}
        if group in sure:  # the classifier sees it: the caption must say it
            shown += 1
            named += group in groups_in(d.caption)
    assert shown >= 6, f"only {shown} photos the classifier is sure of"
    assert named == shown, f"{named} of {shown} captions name what the classifier sees"
