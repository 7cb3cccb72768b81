"""Seed ensembles: runs of one configuration, seeds apart, tag a split together.

Every member computes its emissions ``E_m`` (W, L) for each example; the members' emissions and
CRF potentials (``start``, ``trans``, ``end``, with the BIO constraints that decoding applies) are
averaged and the average is Viterbi-decoded. Why potentials too: a linear-chain CRF scores a tag
path y as s_m(y) = start[y_1] + sum_t E_m[t, y_t] + sum_t trans[y_t-1, y_t] + end[y_W], and
log p_m(y | x) = s_m(y) - log Z_m(x) with Z_m free of y, so the path of the averaged potentials
maximises sum_m log p_m(y | x): the product of the members' probabilities. Averaging emissions alone
would decode them with one member's transitions.

Each member is also scored alone from the same emissions with its own potentials (what
``evaluate`` gives for that run), so the ensemble is reported apart from its single models.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipeline.artifacts import atomic_path
from pipeline.errors import InvalidConfig, MissingInput
from pipeline.runtime import autocast

from .config import TrainConfig
from .crf import viterbi
from .loop import eval_loader
from .metrics import mean_std, score
from .run import load_saved_split

MAY_DIFFER = ("seed", "slug", "device", "checkpoint")   # settings members may differ in


@dataclass
class Member:
    """One run's part: its emissions per example (kept words x labels) and CRF potentials."""

    run: Path
    seed: int
    labels: list[str]
    emissions: list[torch.Tensor]
    potentials: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    scores: dict = field(default_factory=dict)


@dataclass
class EnsembleResult:
    split: str
    tags: list[list[str]]          # the ensemble's tags per example (internal type names)
    scores: dict                   # metrics.score of the ensemble
    members: list[Member]

    def record(self) -> dict:
        """What ``ensemble`` writes: the ensemble's scores and each member's, apart."""
        return {"split": self.split, "method": "mean of emissions and CRF potentials, Viterbi",
                "runs": [str(m.run) for m in self.members],
                "seeds": [m.seed for m in self.members], "ensemble": self.scores,
                "members": [{"run": str(m.run), "seed": m.seed, "scores": m.scores}
                            for m in self.members]}

    def write(self, path) -> Path:
        """``record()`` as JSON at ``path`` (atomically)."""
        with atomic_path(path) as tmp:
            Path(tmp).write_text(json.dumps(self.record(), indent=2) + "\n")
        return Path(path)


def check_members(configs: dict[Path, TrainConfig]) -> None:
    """Refuse runs whose configurations differ in anything but ``MAY_DIFFER``."""
    def comparable(config: TrainConfig) -> dict:
        return {k: v for k, v in config.to_dict().items() if k not in MAY_DIFFER}

    (first, config), *others = configs.items()
    base = comparable(config)
    for run, config in others:
        got = comparable(config)
        for key in sorted(set(base) | set(got)):
            want = base.get(key)
            if got.get(key) != want:
                diff = key if not isinstance(want, dict) else next(
                    f"{key}.{k}" for k in sorted(want) if want[k] != got[key].get(k))
                raise InvalidConfig(f"run {run.name} differs from run {first.name} in {diff}; "
                                    "an ensemble takes runs of one configuration, seeds apart",
                                    path=run)


def potentials(model) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(start, trans, end)`` as ``Tagger.decode`` uses them (BIO-constrained when set)."""
    crf = model.crf
    start, trans = crf.start_transitions, crf.transitions
    if model.config.bio_constraints:
        start = start.masked_fill(~model.allowed_start, -1e4)
        trans = trans.masked_fill(~model.allowed_trans, -1e4)
    return tuple(t.detach().float().cpu() for t in (start, trans, crf.end_transitions))


@torch.no_grad()
def split_emissions(model, split, device, table, batch_size: int, precision: str):
    """Per example of ``split``, its emissions over the words the encoder saw (kept, L), CPU."""
    model.eval()
    out: list[torch.Tensor | None] = [None] * len(split.encoded)
    for batch in eval_loader(split, batch_size, device.type == "cuda"):
        with autocast(device, precision):
            E = model.emissions(batch.to(device, table)).float().cpu()
        for row, position in enumerate(batch.positions.tolist()):
            out[position] = E[row, :len(split.encoded.first[position])]
    return out


def decode(emissions: list[torch.Tensor], pots, labels: list[str],
           n_words: list[int]) -> list[list[str]]:
    """Viterbi tags per example; words the encoder did not see are ``O`` (as ``evaluate``)."""
    tags = []
    for E, total in zip(emissions, n_words):
        kept = E.shape[0]
        ids = viterbi(E[None], torch.ones(1, kept, dtype=torch.bool), *pots)[0].tolist() \
            if kept else []
        tags.append([labels[i] for i in ids] + ["O"] * (total - kept))
    return tags


def average(members: list[Member]):
    """The members' mean emissions per example and mean potentials."""
    emissions = [torch.stack(rows).mean(0) for rows in zip(*(m.emissions for m in members))]
    pots = tuple(torch.stack(p).mean(0) for p in zip(*(m.potentials for m in members)))
    return emissions, pots


def load_member(run_dir: Path, split: str, device: str):
    """A run's ``Member`` on ``split``, plus the split's gold tags, word counts and type names."""
    saved = load_saved_split(run_dir, split, device)
    config, model, part = saved.config, saved.model, saved.split
    emissions = split_emissions(model, part, saved.device, saved.table,
                                config.optim.eval_batch_size, config.precision)
    member = Member(run_dir, config.seed, list(model.labels), emissions, potentials(model))
    n_words = [int(n) for n in part.encoded.n_words]
    return member, part.gold, n_words, saved.inputs.dataset.type_names


def ensemble(run_dirs, split: str = "test", device: str = "auto") -> EnsembleResult:
    """Tag ``split`` with the runs in ``run_dirs`` together (see the module docstring)."""
    runs = [Path(r) for r in run_dirs]
    if not runs:
        raise InvalidConfig("an ensemble needs at least one run folder")
    for run in runs:
        if not (run / "config.json").is_file():
            raise MissingInput("not a run folder (no config.json)", path=run,
                               hint="give folders under <artifacts>/runs/")
    check_members({run: TrainConfig.from_json(run / "config.json") for run in runs})
    members = []
    for run in runs:
        member, gold, n_words, type_names = load_member(run, split, device)
        if members and member.labels != members[0].labels:
            raise InvalidConfig(f"run {run.name} has other labels than run {runs[0].name}",
                                path=run)
        member.scores = score(gold, decode(member.emissions, member.potentials, member.labels,
                                           n_words), type_names)
        members.append(member)
    emissions, pots = average(members)
    tags = decode(emissions, pots, members[0].labels, n_words)
    return EnsembleResult(split, tags, score(gold, tags, type_names), members)


def f1_line(scores: dict, mode: str) -> float:
    return 100 * scores[mode]["overall"]["f1"]


def summary_lines(result: EnsembleResult) -> list[str]:
    """The members' F1 (mean ± std) and the ensemble's, both modes, apart."""
    lines = []
    for mode in ("conlleval", "strict"):
        single = [f1_line(m.scores, mode) for m in result.members]
        mean, std = mean_std(single)
        lines.append(f"{result.split} F1 {mode}: single models {mean:.2f} ± {std:.2f} "
                     f"({', '.join(f'{v:.2f}' for v in single)}); ensemble of "
                     f"{len(single)}: {f1_line(result.scores, mode):.2f}")
    return lines


__all__ = ["ensemble", "EnsembleResult", "summary_lines", "decode", "average"]
