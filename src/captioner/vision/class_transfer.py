"""Which seen word an unseen class word starts from, for the open vocabulary
(decoders/open_vocab.py). Torch-free data beside the class-to-word map (class_words.py)."""

from __future__ import annotations

# Open vocabulary (Hendricks et al. 2016, DCC): a class word that no training caption uses is
# added to a model's vocabulary with the embedding and output weights of a close word it has,
# so the decoder puts it where that word would go and the class evidence decides between them.
# word -> source word, chosen by where the word goes in a sentence and what it looks like;
# a source missing from a vocabulary is followed further when it has an entry of its own.
TRANSFER: dict[str, str] = {
    # animals
    "zebra": "horse", "antelope": "deer", "bison": "cow", "buffalo": "cow",
    "cattle": "cow", "ox": "cow", "ram": "sheep", "boar": "dog", "pig": "dog", "hippo": "elephant",
    "llama": "sheep", "camel": "horse", "ape": "monkey", "baboon": "monkey", "chimpanzee": "monkey",
    "gorilla": "monkey", "panda": "bear", "polar": "white", "koala": "bear", "teddy": "stuffed",
    "lion": "dog", "cheetah": "dog", "leopard": "dog", "jaguar": "dog", "cougar": "dog",
    "lynx": "cat", "hyena": "dog", "coyote": "dog", "fox": "dog", "wolf": "dog", "dalmatian": "dog",
    "pug": "dog", "otter": "dog", "beaver": "squirrel", "skunk": "squirrel", "hamster": "mouse",
    "hare": "squirrel", "rabbit": "squirrel", "seal": "dog", "manatee": "fish", "whale": "fish",
    "shark": "fish", "goldfish": "fish", "starfish": "fish", "jellyfish": "fish", "reef": "water",
    "crab": "fish", "lobster": "fish", "snail": "animal", "turtle": "animal", "frog": "animal",
    "lizard": "animal", "iguana": "lizard", "chameleon": "lizard", "crocodile": "animal",
    "alligator": "animal", "snake": "animal", "dinosaur": "statue", "scorpion": "animal",
    "bug": "animal", "beetle": "bug", "ant": "bug", "bee": "bug", "ladybug": "bug",
    "grasshopper": "bug", "dragonfly": "bug", "butterfly": "bird", "monarch": "butterfly",
    "chicken": "bird", "hen": "bird", "rooster": "bird", "goose": "duck", "ostrich": "bird",
    "robin": "bird", "eagle": "bird", "vulture": "bird", "owl": "bird", "parrot": "bird",
    "peacock": "bird", "toucan": "bird", "hummingbird": "bird", "flamingo": "bird",
    "heron": "bird", "egret": "bird", "stork": "bird", "pelican": "bird", "penguin": "bird",
    # vehicles
    "taxi": "car", "cab": "car", "limo": "car", "rv": "van", "camper": "van", "ambulance": "van",
    "tractor": "truck", "forklift": "truck", "trolley": "train", "steam": "train",
    "sailboat": "boat", "submarine": "boat", "gondola": "boat", "blimp": "plane",
    "missile": "plane", "shuttle": "plane", "wing": "plane", "mower": "cart",
    "wheelbarrow": "cart",
    # food
    "banana": "food", "bananas": "banana", "oranges": "orange", "lemon": "orange",
    "pineapple": "fruit", "strawberries": "fruit", "broccoli": "food", "cauliflower": "broccoli",
    "cabbage": "food", "zucchini": "food", "cucumber": "food", "squash": "food",
    "artichoke": "food", "mushroom": "food", "mushrooms": "mushroom", "peppers": "food",
    "potatoes": "food", "vegetables": "food", "sandwich": "food", "burger": "food",
    "hamburger": "burger", "hotdog": "food", "burrito": "food", "bagel": "bread",
    "pretzel": "bread", "dough": "bread", "pie": "cake", "dessert": "cake", "popsicle": "food",
    "pasta": "food", "soup": "food", "meat": "food", "guacamole": "food", "menu": "sign",
    # things
    "teapot": "cup", "pan": "plate", "knife": "cup", "spoon": "cup", "sink": "table",
    "oven": "table", "microwave": "box", "toaster": "box", "fridge": "box",
    "refrigerator": "fridge", "dishwasher": "box", "vacuum": "machine", "chainsaw": "machine",
    "hammer": "shovel", "broom": "shovel", "printer": "machine", "keyboard": "computer",
    "remote": "phone", "cell": "phone", "monitor": "computer", "television": "tv",
    "speaker": "box", "lamp": "light", "candle": "light", "clock": "sign", "meter": "pole",
    "mailbox": "box", "trash": "bucket", "vase": "cup", "crib": "bed", "curtain": "blanket",
    "kimono": "dress", "books": "book", "bookshelf": "table", "banjo": "guitar",
    "cello": "violin", "saxophone": "instrument", "trumpet": "instrument",
    "trombone": "instrument", "scoreboard": "sign", "graduation": "crowd",
    # places
    "arch": "bridge", "bakery": "building", "barber": "building", "carousel": "building",
    "castle": "building", "dam": "bridge", "geyser": "fountain", "greenhouse": "building",
    "library": "building", "lighthouse": "building", "mosque": "church", "palace": "building",
    "totem": "statue", "tower": "building",
}  # fmt: skip


def transfer_source(word: str, known: set[str] | dict[str, int]) -> str | None:
    """The word whose weights an unseen class word starts from (following the table while
    the source is unknown too), or None when the chain reaches no known word."""
    seen = set()
    while word in TRANSFER and word not in seen:
        seen.add(word)
        word = TRANSFER[word]
        if word in known:
            return word
    return None
