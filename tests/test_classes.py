"""The encoder's ImageNet head names what is in real photos, and class_words turns classes into
caption words."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import COCO, needs_coco
from PIL import Image

from captioner.core.errors import ConfigError, NoClassHead
from captioner.data.vocab import tokenize
from captioner.vision import class_words as cw_module
from captioner.vision import classes
from captioner.vision.classes import class_head, class_names, class_words, word_scores
from captioner.vision.encoders import Encoder, pretrained_state
from captioner.vision.registry import get_spec

DOGS = range(151, 269)  # Chihuahua .. Mexican hairless


def test_class_list_has_1000_unique_names_in_index_order():
    names = class_names()
    assert len(names) == 1000 and len(set(names)) == 1000
    assert names[0] == "tench" and names[999] == "toilet tissue"
    assert (names[151], names[268]) == ("Chihuahua", "Mexican hairless")
    assert names[281:286] == ("tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat")
    assert (names[340], names[345], names[963]) == ("zebra", "ox", "pizza")


def test_class_words_follow_the_hierarchy():
    words = class_words()
    assert all("dog" in words[i] for i in DOGS)
    assert all("cat" in words[i] for i in range(281, 286))
    dog_classes = {class_names()[i] for i, ws in words.items() if "dog" in ws and i not in DOGS}
    assert dog_classes == {"dingo", "African hunting dog", "dogsled"}  # not hotdog, not wolves
    name = {n: i for i, n in enumerate(class_names())}
    assert "cow" in words[name["ox"]] and words[name["zebra"]] == ("zebra",)
    assert "horse" in words[name["sorrel"]] and "parrot" in words[name["macaw"]]
    assert {"taxi", "car"} <= set(words[name["cab"]])
    assert words[name["passenger car"]] == ("train",)  # the railway carriage
    assert "bike" in words[name["mountain bike"]] and "bus" in words[name["school bus"]]
    assert words[name["cheeseburger"]][0] == "burger" and "bear" in words[name["teddy"]]
    assert "kite" not in {w for ws in words.values() for w in ws}  # class 21 is the bird
    assert name["abacus"] not in words  # no caption word for it
    # Every word is one token of captioner's tokenizer, so it can be a vocabulary entry.
    assert all(tokenize(w) == [w] for ws in words.values() for w in ws)
    assert 600 <= len(words) <= 1000


def test_a_misspelt_class_name_fails_loudly(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(cw_module.TABLE, "zebrra", ("zebra",))
    cw_module.class_words.cache_clear()
    try:
        with pytest.raises(ValueError, match="zebrra"):
            cw_module.class_words()
    finally:
        monkeypatch.undo()
        cw_module.class_words.cache_clear()


def test_word_scores_sum_the_classes_of_each_word():
    probs = torch.zeros(2, 1000)
    probs[0, 340] = 0.7  # zebra
    probs[0, 207] = 0.2  # golden retriever
    probs[0, 208] = 0.1  # Labrador retriever
    probs[1, 468] = 1.0  # cab
    vocab = ["<pad>", "dog", "zebra", "car", "taxi", "lab", "sunset"]
    got = word_scores(probs, vocab)
    want = torch.tensor([[0, 0.3, 0.7, 0, 0, 0.1, 0], [0, 0, 0, 1.0, 1.0, 0, 0]])
    torch.testing.assert_close(got, want)


def test_heads_are_refused_with_a_reason(monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(ConfigError, match="unknown encoder"):
        class_head("vgg16")
    monkeypatch.delitem(classes._HEADS, "resnet")  # an encoder family without a head
    with pytest.raises(NoClassHead, match="resnet50.*no ImageNet classifier head"):
        class_head("resnet50")


@pytest.fixture(scope="module")
def lite0() -> tuple[Encoder, classes.ClassHead]:
    return Encoder("efficientnet_lite0"), class_head("efficientnet_lite0")


def features(encoder: Encoder, path: Path) -> torch.Tensor:
    image = Image.open(path).convert("RGB")
    return encoder(torch.from_numpy(encoder.preprocess(image).copy())[None])


def test_head_matches_the_full_network(photo_dir: Path, lite0):
    """ClassHead on the encoder's (onnxruntime) pooled features = EfficientNet-Lite's own
    logits, head included, on a real photo."""
    from efficientnet_lite_pytorch import EfficientNet

    encoder, head = lite0
    image = Image.open(photo_dir / "chelsea.jpg").convert("RGB")
    pixels = torch.from_numpy(encoder.preprocess(image).copy())[None]
    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(pretrained_state(get_spec("efficientnet_lite0")))
    x = (pixels.permute(0, 3, 1, 2).float() - 127.0) / 128.0
    with torch.no_grad():
        want = net.eval()(x)
    torch.testing.assert_close(head(encoder(pixels)), want, rtol=0, atol=1e-4)
    by_hand = encoder(pixels) @ head.weight.T + head.bias  # what a decoder can hold as buffers
    torch.testing.assert_close(by_hand, want, rtol=0, atol=1e-4)
    assert class_head("efficientnet_lite2").fc.weight.shape == (1000, 1280)


def test_real_photos_get_their_classes(photo_dir: Path, lite0):
    encoder, head = lite0
    vocab = sorted({w for ws in class_words().values() for w in ws})

    def top(name: str, k: int = 3) -> tuple[list[str], list[str]]:
        f = features(encoder, photo_dir / f"{name}.jpg")
        labels = [d["label"] for d in head.top(f, k)[0]]
        ws = word_scores(head.probabilities(f), vocab)[0].topk(k).indices.tolist()
        return labels, [vocab[i] for i in ws]

    labels, words = top("chelsea")
    assert set(labels) <= {"tabby", "tiger cat", "Egyptian cat"} and words[0] == "cat"
    labels, words = top("coffee")
    assert labels[0] == "espresso" and "cup" in labels and words[:2] == ["coffee", "cup"]
    labels, words = top("rocket")
    assert {"missile", "projectile"} <= set(labels) and words[0] == "rocket"
    _, words = top("astronaut")
    assert "helmet" in words  # she holds her helmet; ImageNet has no astronaut or space suit
    f = features(encoder, photo_dir / "coffee.jpg")
    assert [d["label"] for d in head.top(f, k=5, threshold=0.5)[0]] == ["espresso"]
    probs = head.probabilities(f)
    assert probs.shape == (1, 1000) and abs(float(probs.sum()) - 1) < 1e-5


# Words whose COCO photos EfficientNet-Lite0 names. Not "giraffe": ImageNet-1k has no giraffe
# class (a giraffe comes out as ostrich/gazelle/llama). Not "cat": coco-mini's two cat photos
# show the cat beside a laptop or a dog, and lite0's top 5 are those.
COCO_WORDS = ["zebra", "bus", "pizza", "elephant", "train", "bear", "banana", "sheep", "clock"]


@needs_coco
def test_coco_photos_get_a_class_that_maps_to_their_caption_words(lite0):
    encoder, head = lite0
    data = json.loads((COCO / "annotations" / "captions_val2017.json").read_text())
    files = {im["id"]: im["file_name"] for im in data["images"]}
    captions: dict[int, list[str]] = {}
    for ann in data["annotations"]:
        captions.setdefault(ann["image_id"], []).append(ann["caption"].lower())
    words = class_words()
    checked = []
    for word in COCO_WORDS:
        pattern = re.compile(rf"\b{word}s?\b")
        for image_id, caps in captions.items():
            if sum(bool(pattern.search(c)) for c in caps) < 3:  # most captions mention it
                continue
            probs = head.probabilities(features(encoder, COCO / "val2017" / files[image_id]))
            top5 = probs[0].topk(5).indices.tolist()
            named = [class_names()[i] for i in top5]
            assert any(word in words.get(i, ()) for i in top5), (word, files[image_id], named)
            checked.append(word)
    assert set(checked) == set(COCO_WORDS), "coco-mini lacks photos of some words"


def test_every_transferred_word_starts_from_a_word_the_bundled_model_knows():
    from captioner.decoders.open_vocab import added_words
    from captioner.storage.bundle import load_bundle
    from captioner.vision.class_transfer import TRANSFER, transfer_source

    produced = {w for ws in class_words().values() for w in ws}
    assert set(TRANSFER) <= produced, sorted(set(TRANSFER) - produced)  # no stale entries
    vocab = load_bundle(Path(__file__).parents[1] / "src/captioner/models/default").vocab
    unseen = sorted(produced - set(vocab.stoi))
    assert unseen and all(transfer_source(w, vocab.stoi) in vocab.stoi for w in unseen)
    pairs = dict(added_words(vocab))
    assert set(pairs) == set(unseen)  # every class word can be said
    assert pairs["zebra"] == "horse" and pairs["teddy"] == "stuffed"
    assert pairs["hamburger"] == "food"  # hamburger -> burger -> food: a chain ends in a word


def test_open_vocabulary_splits_the_source_words_probability_by_the_classes():
    from captioner.data.vocab import Vocabulary
    from captioner.decoders.attention import ShowAttendTell
    from captioner.decoders.base import DecoderConfig
    from captioner.decoders.open_vocab import MAX_SHARE, open_vocabulary

    words = ["<pad>", "<start>", "<end>", "<unk>", "a", "horse", "dog", "runs"]
    vocab = Vocabulary(words)
    cfg = DecoderConfig(
        kind="attention", feature_dim=8, vocab_size=len(words), embed_size=6, hidden_size=6,
        attention_size=5, dropout=0.0, num_classes=1000,
    )  # fmt: skip
    torch.manual_seed(0)
    base = ShowAttendTell(cfg).eval()
    zebra = class_names().index("zebra")
    head = torch.zeros(1000, 8)
    head[zebra] = 30.0  # features of ones: the classifier is sure it sees a zebra
    base.set_class_head(head, torch.zeros(1000))
    model, big = open_vocabulary(base, vocab)
    assert big.itos[: len(words)] == words and "zebra" in big.stoi and "lion" in big.stoi
    assert "teddy" not in big.stoi  # its source ("stuffed") is not a word of this vocabulary
    with torch.no_grad():
        grid = torch.ones(1, 3, 8)
        tokens = torch.tensor([Vocabulary.start_id])
        plain, _ = base.step(tokens, base.init_state(grid))
        grown, state = model.step(tokens, model.init_state(grid))
        assert torch.allclose(grown.exp().sum(), torch.tensor(1.0), atol=1e-5)
        h, z, t = vocab.stoi["horse"], big.stoi["zebra"], big.stoi["lion"]
        # The horse slot is shared: the zebra takes MAX_SHARE of it; the lion (from the dog
        # slot, not seen in this photo) nothing.
        assert torch.allclose(grown[0, z].exp(), MAX_SHARE * plain[0, h].exp(), rtol=1e-4)
        assert torch.allclose(grown[0, h].exp(), (1 - MAX_SHARE) * plain[0, h].exp(), rtol=1e-4)
        assert grown[0, t].exp() < 1e-9
        assert torch.allclose(grown[0, vocab.stoi["dog"]], plain[0, vocab.stoi["dog"]])
        # A new word is read back as its source: "zebra" next is "horse" next.
        after_z, _ = model.step(torch.tensor([z]), state)
        after_h, _ = model.step(torch.tensor([h]), state)
        assert torch.equal(after_z, after_h)
