"""Object-type vocabularies: the 80 COCO categories, caption nouns -> COCO, ImageNet labels -> text.

Used when no object detector is available (see docs: offline models):

- ``caption_objects(caption)`` finds COCO categories named in a caption, through the category names,
  their plurals and common synonyms ("a man and two puppies on a sofa" -> person, dog, couch);
- ``caption_object_matrix(captions)`` turns many captions into an (n, 80) multi-hot or count matrix;
- ``imagenet_phrase(labels)`` describes an image by its top ImageNet labels ("a photo of an
  espresso, a cup, a coffee mug") so that a sentence encoder can embed it next to the tweet.
"""
from __future__ import annotations

import re

import numpy as np

#: The 80 COCO detection categories in their usual order (= torchvision's COCO_V1 meta without N/A).
COCO_80 = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush")

#: Words and phrases (singular, comma-separated) naming a COCO category besides its own name.
SYNONYMS = {
    "person": "people, man, woman, boy, girl, child, kid, baby, toddler, teenager, player, guy, "
              "lady, gentleman, crowd, athlete, singer, actor, actress, musician, dancer, soldier, "
              "officer, policeman, police, worker, fan, audience, couple, family, student, bride, "
              "groom, rider, skier, surfer, skateboarder, president, politician, celebrity, "
              "speaker, chef, doctor, nurse, band, team, wrestler, boxer, footballer, golfer, "
              "runner, pilot, model, queen, king, prince, princess, cyclist, rapper, artist, "
              "drummer, guitarist, performer, fighter, priest, pope, host",
    "bicycle": "bike",
    "car": "taxi, suv, jeep, sedan, racecar, race car, sports car",
    "motorcycle": "motorbike, scooter, moped",
    "airplane": "plane, aeroplane, jet, aircraft, airliner",
    "train": "locomotive, tram",
    "truck": "lorry, pickup, pickup truck, fire truck",
    "boat": "ship, yacht, sailboat, canoe, kayak, ferry",
    "traffic light": "stoplight, traffic signal",
    "fire hydrant": "hydrant",
    "bird": "pigeon, seagull, gull, duck, eagle, parrot, owl, chicken, swan, goose",
    "cat": "kitten, kitty",
    "dog": "puppy, pup",
    "horse": "pony, foal",
    "sheep": "lamb",
    "cow": "cattle, bull, calf, ox",
    "backpack": "rucksack",
    "handbag": "purse, bag",
    "tie": "necktie",
    "suitcase": "luggage",
    "skis": "ski",
    "sports ball": "ball, football, basketball, baseball, volleyball, soccer ball, tennis ball, "
                   "golf ball",
    "baseball glove": "mitt",
    "tennis racket": "racket, racquet",
    "wine glass": "wineglass, glass of wine",
    "cup": "mug, teacup",
    "sandwich": "burger, hamburger",
    "hot dog": "hotdog",
    "donut": "doughnut",
    "cake": "cupcake",
    "couch": "sofa",
    "potted plant": "houseplant, flower pot",
    "dining table": "table",
    "tv": "television, tv screen",
    "laptop": "notebook",
    "remote": "remote control",
    "cell phone": "phone, smartphone, iphone, cellphone, mobile phone",
    "oven": "stove",
    "refrigerator": "fridge",
    "book": "novel",
    "teddy bear": "teddy",
    "hair drier": "hairdryer, hair dryer",
}

_IRREGULAR = {"man": "men", "woman": "women", "child": "children", "person": "persons",
              "people": "peoples", "knife": "knives", "mouse": "mice", "calf": "calves",
              "ox": "oxen", "goose": "geese", "sheep": "sheep", "bus": "buses", "fish": "fish",
              "lady": "ladies", "skis": "skis", "family": "families", "couch": "couches",
              "sandwich": "sandwiches", "glass": "glasses", "box": "boxes", "bench": "benches",
              "brush": "brushes", "toothbrush": "toothbrushes", "princess": "princesses",
              "actress": "actresses", "scissors": "scissors", "police": "police",
              "cattle": "cattle", "luggage": "luggage", "broccoli": "broccoli"}
_WORD = re.compile(r"[a-z]+")


def _plural(phrase: str) -> str:
    head, _, last = phrase.rpartition(" ")
    if last in _IRREGULAR:
        plural = _IRREGULAR[last]
    elif last.endswith("y") and last[-2:-1] not in "aeiou":
        plural = last[:-1] + "ies"
    elif last.endswith(("s", "x", "ch", "sh")):
        plural = last + "es"
    else:
        plural = last + "s"
    return f"{head} {plural}" if head else plural


def _lexicon() -> dict[tuple[str, ...], int]:
    """Every surface form (as a word tuple, singular and plural) -> COCO category index."""
    lexicon: dict[tuple[str, ...], int] = {}
    for index, name in enumerate(COCO_80):
        forms = [name, *(f.strip() for f in SYNONYMS.get(name, "").split(",") if f.strip())]
        for form in forms:
            for surface in (form, _plural(form)):
                lexicon.setdefault(tuple(surface.split()), index)
    return lexicon


LEXICON = _lexicon()
_LONGEST = max(len(key) for key in LEXICON)


def caption_objects(caption: str) -> list[int]:
    """COCO category indices mentioned in ``caption``, one per mention (longest phrase first)."""
    words = _WORD.findall(caption.lower())
    found, i = [], 0
    while i < len(words):
        for width in range(min(_LONGEST, len(words) - i), 0, -1):
            index = LEXICON.get(tuple(words[i:i + width]))
            if index is not None:
                found.append(index)
                i += width
                break
        else:
            i += 1
    return found


def caption_object_matrix(captions: list[str], counts: bool = False) -> np.ndarray:
    """(n, 80) float32: 1 where a caption names a category (or the number of mentions)."""
    matrix = np.zeros((len(captions), len(COCO_80)), dtype=np.float32)
    for row, caption in enumerate(captions):
        for index in caption_objects(caption):
            matrix[row, index] = matrix[row, index] + 1 if counts else 1.0
    return matrix


def _with_article(label: str) -> str:
    return ("an " if label[:1] in "aeiou" else "a ") + label


def imagenet_phrase(labels: list[str]) -> str:
    """``["dog", "leash", "park"]`` -> ``"a photo of a dog, a leash, a park"``."""
    return "a photo of " + ", ".join(_with_article(label.lower()) for label in labels)


def coco_prompts(template: str = "a photo of {}.") -> list[str]:
    """Zero-shot prompts over the 80 COCO names ("a photo of a dog."), e.g. for CLIP."""
    return [template.format(_with_article(name)) for name in COCO_80]
