"""The toolkit from Python: load a run and tag raw tweets, or train from a config object.

    from trainer.api import load, train
    from trainer.config import TrainConfig

    tagger = load("artifacts/runs/20260101-120000-twitter2017-full-s1")
    spans = tagger.tag(["Obama visits Paris", ["Messi", "scores", "again"]],
                       captions=["a man waving at a crowd", None])
    spans[0]    # [Span(type='PER', start=0, end=1, text='Obama'), Span(type='LOC', ...)]

    config = TrainConfig(data_dir="data/twitter2017").with_overrides(epochs=5, seed=2)
    result = train(config)
    result.path, result.test["conlleval"]["overall"]["f1"]

A tweet is a string (split at whitespace, so give it tokenised the way the training data was) or
a list of tokens. ``images`` (image files) and ``captions`` are optional, one entry (or None) per
tweet; which of the two a run takes depends on how its features were extracted (captions or image
files), as for ``predict``. Spans use the dataset's type names and token ranges ``[start, end)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import InvalidConfig, MissingInput
from pipeline.labels import entities
from pipeline.progress import no_progress

from .config import TrainConfig
from .predict import Example, LoadedRun, load_run, predict
from .run import RunResult, train_seeds


@dataclass(frozen=True)
class Span:
    """An entity: its type (the dataset's spelling), token range ``[start, end)`` and text."""

    type: str
    start: int
    end: int
    text: str


class Tagger:
    """A saved run, loaded once (``load``); ``tag`` tags as many tweets as it is given."""

    def __init__(self, run: LoadedRun):
        self.run = run
        self.notes: list[str] = []      # what the last ``tag`` call could not use (bad images)

    @property
    def types(self) -> list[str]:
        """The entity types this tagger predicts (the dataset's spelling)."""
        return self.run.labels.dataset_types()

    def tag(self, tweets, images=None, captions=None, progress=no_progress) -> list[list[Span]]:
        """The entity spans of each tweet (see the module docstring)."""
        prediction = predict(self.run, examples(tweets, images, captions), progress=progress)
        self.notes = prediction.notes
        labels = self.run.labels
        return [[Span(labels.type_to_dataset(kind), start, end, " ".join(e.tokens[start:end]))
                 for kind, start, end in entities(tags)]
                for e, tags in zip(prediction.examples, prediction.tags)]


def examples(tweets, images=None, captions=None) -> list[Example]:
    """``Example``s ``tweet-1``, ``tweet-2``... of raw tweets with their optional views."""
    if isinstance(tweets, str):
        raise InvalidConfig("give a list of tweets, not one string", value=tweets[:40])
    tweets = list(tweets)
    out = []
    for name, given in (("images", images), ("captions", captions)):
        if given is not None and len(given) != len(tweets):
            raise InvalidConfig(f"{len(given)} {name} for {len(tweets)} tweets; give one per "
                                "tweet (None where there is none)", setting=name)
    for i, tweet in enumerate(tweets):
        tokens = tuple(tweet.split() if isinstance(tweet, str) else tweet)
        if not tokens or not all(isinstance(t, str) and t.strip() for t in tokens):
            raise InvalidConfig(f"tweet {i + 1} has no words (or an empty token)", value=tweet)
        image = images[i] if images is not None else None
        if image is not None and not Path(image).is_file():
            raise MissingInput("image file not found", path=image, setting="images")
        out.append(Example(f"tweet-{i + 1}", tokens, (),
                           captions[i] if captions is not None else None,
                           Path(image) if image is not None else None))
    return out


def load(run_dir, device: str = "auto") -> Tagger:
    """The run in ``run_dir`` as a ``Tagger`` (its folder alone: weights, labels, ``pool.h5``)."""
    return Tagger(load_run(run_dir, device))


def train(config: TrainConfig, progress=no_progress, log=None) -> RunResult:
    """Extracted features and built graphs in ``config.artifacts`` (image models) -> one trained
    run folder for ``config.seed``; ``RunResult`` has its path and valid / test scores."""
    return train_seeds(config, [config.seed], progress, log)[0]
