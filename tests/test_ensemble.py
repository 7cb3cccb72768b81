"""Seed ensembles (``cli.py ensemble``): averaged emissions and CRF potentials, Viterbi-decoded;
checked against brute force on a hand-made case and against ``evaluate`` on tiny runs."""
from __future__ import annotations

import itertools
import json
import shutil

import pytest
import torch

from pipeline.errors import InvalidConfig
from tagger_fixtures import invoke, tiny_encoder, tiny_pipeline, train_args  # noqa: F401
from trainer.ensemble import Member, average, decode, ensemble


def path_score(E, pots, path) -> float:
    start, trans, end = pots
    total = start[path[0]] + end[path[-1]] + sum(E[t, y] for t, y in enumerate(path))
    return float(total + sum(trans[a, b] for a, b in zip(path, path[1:])))


def log_probs(E, pots, paths) -> torch.Tensor:
    """log p(path | x) of every path, by enumeration: score - log Z."""
    scores = torch.tensor([path_score(E, pots, p) for p in paths])
    return scores - torch.logsumexp(scores, 0)


def test_the_averaged_path_maximises_the_members_summed_log_probabilities():
    gen = torch.Generator().manual_seed(0)
    labels = ["a", "b", "c"]
    paths = list(itertools.product(range(3), repeat=4))
    disagree = 0
    for _ in range(20):
        members = [Member("r", s, labels, [torch.randn(4, 3, generator=gen)],
                          tuple(torch.randn(*shape, generator=gen)
                                for shape in ((3,), (3, 3), (3,)))) for s in range(3)]
        emissions, pots = average(members)
        [tags] = decode(emissions, pots, labels, [5])
        assert tags[4] == "O"                    # a word past the encoder's cut
        summed = sum(log_probs(m.emissions[0], m.potentials, paths) for m in members)
        best = paths[int(summed.argmax())]
        assert tags[:4] == [labels[i] for i in best]
        alone = {tuple(decode(m.emissions, m.potentials, labels, [4])[0]) for m in members}
        disagree += len(alone) > 1
    assert disagree >= 10        # mostly the members disagree: the cases are not trivial


@pytest.fixture(scope="module")
def two_seeds(tiny_pipeline, tiny_encoder, tmp_path_factory):
    """Two text-only runs of one config, seeds 1 and 2, in a copy of the tiny pipeline."""
    data, artifacts = tiny_pipeline
    copy = tmp_path_factory.mktemp("ensemble") / "artifacts"
    shutil.copytree(artifacts, copy, ignore=shutil.ignore_patterns("runs"))
    result = invoke(*train_args(data, copy, tiny_encoder, "--text-only", "--seeds", "1,2",
                                "--lr-head", "0.01"))
    assert result.exit_code == 0, result.output
    return sorted((copy / "runs").iterdir())


def test_members_score_as_evaluate_and_the_ensemble_is_reported_apart(two_seeds, tmp_path):
    from trainer.run import evaluate_run

    result = ensemble(two_seeds, "test", "cpu")
    assert [m.seed for m in result.members] == [1, 2]
    for member, run in zip(result.members, two_seeds):
        assert member.scores == evaluate_run(run, "test", "cpu")[0].scores
    [alone] = ensemble(two_seeds[:1], "test", "cpu").members
    assert alone.scores == result.members[0].scores
    out = tmp_path / "ensemble.json"
    cli = invoke("ensemble", "--run", two_seeds[0], "--run", two_seeds[1], "--device", "cpu",
                 "-o", out)
    assert cli.exit_code == 0, cli.output
    assert "test (ensemble of 2 runs)" in cli.output
    assert "test F1 conlleval: single models " in cli.output and "ensemble of 2: " in cli.output
    record = json.loads(out.read_text())
    assert record["seeds"] == [1, 2] and record["ensemble"] == result.scores
    assert [m["scores"] for m in record["members"]] == [m.scores for m in result.members]


def test_runs_of_different_configs_are_refused(two_seeds, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(two_seeds[1], other)
    config = json.loads((other / "config.json").read_text())
    config["optim"]["lr_head"] = 0.5
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidConfig, match="run other differs from run .* in optim.lr_head; "
                                            "an ensemble takes runs of one configuration"):
        ensemble([two_seeds[0], other], "test", "cpu")
    cli = invoke("ensemble", "--run", two_seeds[0], "--run", other)
    assert cli.exit_code == 1 and cli.output.startswith(f"Error: {other}: run other differs")
