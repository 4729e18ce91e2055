"""Object groups: COCO's 80 categories with the words people use for them (plurals, synonyms,
two-word names), each of a kind (person, animal, vehicle, food, object), and which groups an
ImageNet class stands for. Torch-free data, read by decoding (no caption may contradict a
confident tag) and by evaluation (object mentions)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

from ..data.vocab import tokenize

# Kinds whose groups exclude each other in one photo's caption and tags: a photo tagged zebra
# is not "a dog", but it may well hold a person, a bench and a ball.
KINDS_CHECKED = ("animal", "vehicle", "food")

# group -> (kind, words); a word with a space is a two-word name, matched before its parts.
GROUPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "person": ("person", ("person", "people", "man", "men", "woman", "women", "boy", "boys",
               "girl", "girls", "child", "children", "kid", "kids", "guy", "guys", "lady",
               "ladies", "player", "players", "baby", "toddler", "skier", "surfer", "skateboarder",
               "snowboarder", "rider", "crowd", "persons", "adult", "adults", "teenager")),
    "bicycle": ("vehicle", ("bicycle", "bicycles", "bike", "bikes", "cyclist", "cyclists")),
    "car": ("vehicle", ("car", "cars", "taxi", "taxis", "cab", "cabs", "suv", "jeep", "sedan")),
    "motorcycle": ("vehicle", ("motorcycle", "motorcycles", "motorbike", "motorbikes", "scooter",
                   "moped", "dirt bike")),
    "airplane": ("vehicle", ("airplane", "airplanes", "plane", "planes", "jet", "jets",
                 "aircraft", "airliner")),
    "bus": ("vehicle", ("bus", "buses", "busses")),
    "train": ("vehicle", ("train", "trains", "locomotive", "tram", "trolley", "streetcar")),
    "truck": ("vehicle", ("truck", "trucks", "pickup")),
    "boat": ("vehicle", ("boat", "boats", "ship", "ships", "canoe", "canoes", "kayak", "kayaks",
             "sailboat", "sailboats", "yacht", "ferry")),
    "traffic light": ("object", ("traffic light", "traffic lights", "stoplight", "stop light")),
    "fire hydrant": ("object", ("fire hydrant", "hydrant", "hydrants")),
    "stop sign": ("object", ("stop sign", "stop signs")),
    "parking meter": ("object", ("parking meter", "parking meters", "meter", "meters")),
    "bench": ("object", ("bench", "benches")),
    "bird": ("animal", ("bird", "birds", "duck", "ducks", "goose", "geese", "seagull",
             "seagulls", "gull", "pigeon", "pigeons", "parrot", "swan", "owl", "eagle",
             "chicken", "chickens", "hen", "rooster", "falcon", "hawk")),
    "cat": ("animal", ("cat", "cats", "kitten", "kittens", "kitty")),
    "dog": ("animal", ("dog", "dogs", "puppy", "puppies", "pup")),
    "horse": ("animal", ("horse", "horses", "pony", "ponies", "foal")),
    "sheep": ("animal", ("sheep", "lamb", "lambs", "ram")),
    "cow": ("animal", ("cow", "cows", "cattle", "bull", "bulls", "calf", "ox", "oxen")),
    "elephant": ("animal", ("elephant", "elephants")),
    "bear": ("animal", ("bear", "bears")),
    "zebra": ("animal", ("zebra", "zebras")),
    "giraffe": ("animal", ("giraffe", "giraffes")),
    "backpack": ("object", ("backpack", "backpacks", "knapsack")),
    "umbrella": ("object", ("umbrella", "umbrellas", "parasol")),
    "handbag": ("object", ("handbag", "handbags", "purse", "purses")),
    "tie": ("object", ("tie", "ties", "necktie", "bow tie")),
    "suitcase": ("object", ("suitcase", "suitcases", "luggage")),
    "frisbee": ("object", ("frisbee", "frisbees")),
    "skis": ("object", ("skis", "ski", "skiing", "skier")),
    "snowboard": ("object", ("snowboard", "snowboards", "snowboarding", "snowboarder")),
    "sports ball": ("object", ("ball", "balls", "football", "soccer ball", "baseball",
                    "basketball", "volleyball", "tennis ball")),
    "kite": ("object", ("kite", "kites")),
    "baseball bat": ("object", ("baseball bat", "bat", "bats")),
    "baseball glove": ("object", ("baseball glove", "glove", "mitt", "gloves")),
    "skateboard": ("object", ("skateboard", "skateboards", "skateboarding", "skateboarder")),
    "surfboard": ("object", ("surfboard", "surfboards", "surfing", "surfer", "surf board")),
    "tennis racket": ("object", ("tennis racket", "racket", "racquet", "rackets")),
    "bottle": ("object", ("bottle", "bottles")),
    "wine glass": ("object", ("wine glass", "wine glasses", "wineglass")),
    "cup": ("object", ("cup", "cups", "mug", "mugs")),
    "fork": ("object", ("fork", "forks")),
    "knife": ("object", ("knife", "knives")),
    "spoon": ("object", ("spoon", "spoons")),
    "bowl": ("object", ("bowl", "bowls")),
    "banana": ("food", ("banana", "bananas")),
    "apple": ("food", ("apple", "apples")),
    "sandwich": ("food", ("sandwich", "sandwiches", "burger", "burgers", "hamburger",
                 "hamburgers", "cheeseburger", "sub")),
    "orange": ("food", ("oranges", "tangerine", "tangerines")),
    "broccoli": ("food", ("broccoli",)),
    "carrot": ("food", ("carrot", "carrots")),
    "hot dog": ("food", ("hot dog", "hot dogs", "hotdog", "hotdogs")),
    "pizza": ("food", ("pizza", "pizzas")),
    "donut": ("food", ("donut", "donuts", "doughnut", "doughnuts")),
    "cake": ("food", ("cake", "cakes", "cupcake", "cupcakes")),
    "chair": ("object", ("chair", "chairs")),
    "couch": ("object", ("couch", "couches", "sofa", "sofas")),
    "potted plant": ("object", ("potted plant", "plant", "plants", "houseplant")),
    "bed": ("object", ("bed", "beds")),
    "dining table": ("object", ("table", "tables", "dining table")),
    "toilet": ("object", ("toilet", "toilets")),
    "tv": ("object", ("tv", "tvs", "television", "televisions")),
    "laptop": ("object", ("laptop", "laptops", "computer", "computers")),
    "mouse": ("object", ("mouse",)),
    "remote": ("object", ("remote", "remotes", "controller", "controllers")),
    "keyboard": ("object", ("keyboard", "keyboards")),
    "cell phone": ("object", ("phone", "phones", "cellphone", "cell phone", "smartphone")),
    "microwave": ("object", ("microwave", "microwaves")),
    "oven": ("object", ("oven", "ovens", "stove")),
    "toaster": ("object", ("toaster",)),
    "sink": ("object", ("sink", "sinks")),
    "refrigerator": ("object", ("refrigerator", "fridge", "refrigerators")),
    "book": ("object", ("book", "books")),
    "clock": ("object", ("clock", "clocks")),
    "vase": ("object", ("vase", "vases")),
    "scissors": ("object", ("scissors",)),
    "teddy bear": ("object", ("teddy bear", "teddy bears", "teddy", "stuffed animal")),
    "hair drier": ("object", ("hair drier", "hair dryer", "blow dryer")),
    "toothbrush": ("object", ("toothbrush", "toothbrushes")),
}  # fmt: skip


@cache
def _phrases() -> tuple[dict[tuple[str, str], str], dict[str, str]]:
    pairs, singles = {}, {}
    for group, (_, words) in GROUPS.items():
        for w in words:
            parts = tuple(w.split())
            if len(parts) == 2:
                pairs[parts] = group
            else:
                singles.setdefault(w, group)
    return pairs, singles


def groups_in(text: str | Sequence[str]) -> set[str]:
    """The groups a caption names (two-word names first: "teddy bear" is not a bear)."""
    tokens = tokenize(text) if isinstance(text, str) else list(text)
    pairs, singles = _phrases()
    found, i = set(), 0
    while i < len(tokens):
        pair = tuple(tokens[i : i + 2])
        if len(pair) == 2 and pair in pairs:
            found.add(pairs[pair])
            i += 2
            continue
        if tokens[i] in singles:
            found.add(singles[tokens[i]])
        i += 1
    return found


@cache
def class_groups() -> dict[str, set[str]]:
    """ImageNet class label -> the groups its caption words name (zebra -> {zebra})."""
    from .class_words import class_names, class_words

    names = class_names()
    return {
        names[c]: {g for w in words for g in groups_in([w])} for c, words in class_words().items()
    }
