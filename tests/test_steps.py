"""Training steps: batch padding to few shapes (what CUDA graphs need) changes no result; the
graphed step's bookkeeping (warm-up, capture, input copy, replay, fallback) trains exactly as the
eager step, on the CPU through a stand-in for the CUDA calls; on a GPU (tests marked ``cuda``, run
by ``experiments/gpu/gpu_session.sh steps``) the real CUDA graphs update the model as the eager
step does."""
from __future__ import annotations

import contextlib
import copy
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pipeline.labels import label_list
from tagger_fixtures import (tiny_dataset, tiny_encoder, tiny_image_inputs,  # noqa: F401
                             tiny_tagger)
from trainer.config import OptimConfig
from trainer.loop import _param_groups
from trainer.steps import WARMUP, EagerStep, GraphedStep, set_learning_rates

LABELS = label_list()
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def tiny_setup(encoder, dataset, **flags):
    """A tiny full model (no dropout), its collator over the train split and the node table."""
    model, collator, table, _ = tiny_tagger(encoder, dataset, tiny_image_inputs(dataset, k=3),
                                            dropout=0.0, **flags)
    return model.eval(), collator, table   # eval: no dropout anywhere (the encoder's too)


@pytest.mark.parametrize("text_only", [False, True])
def test_padding_to_multiples_changes_neither_loss_nor_tags(tiny_encoder, tiny_dataset,
                                                            text_only):
    model, collator, table = tiny_setup(tiny_encoder, tiny_dataset, text_only=text_only)
    positions = [1, 2, 5]
    plain = collator(positions).to("cpu", table)
    padded = collator(positions, pad_to=(16, 4)).to("cpu", table)
    longest_ids = max(len(x) for x in collator.encoded.input_ids)
    longest_words = max(len(x) for x in collator.encoded.first)
    for tensor, multiple, longest in ((padded.input_ids, 16, longest_ids),
                                      (padded.word_mask, 4, longest_words)):
        assert tensor.shape[1] % multiple == 0 or tensor.shape[1] == longest
        assert tensor.shape[1] <= max(longest, multiple)
    assert padded.input_ids.shape[1] > plain.input_ids.shape[1]   # the test pads something
    assert padded.word_mask.shape[1] > plain.word_mask.shape[1]
    with torch.no_grad():
        torch.testing.assert_close(model.loss(padded), model.loss(plain), rtol=1e-5, atol=1e-5)
        words = plain.word_mask.shape[1]
        decoded = model.decode(padded)[:, :words]
        assert torch.equal(decoded[plain.word_mask], model.decode(plain)[plain.word_mask])


def test_padding_never_goes_past_the_longest_example(tiny_encoder, tiny_dataset):
    _, collator, _ = tiny_setup(tiny_encoder, tiny_dataset)
    everything = collator(list(range(len(collator.encoded))), pad_to=(1000, 1000))
    assert everything.input_ids.shape[1] == max(len(x) for x in collator.encoded.input_ids)
    assert everything.word_mask.shape[1] == max(len(x) for x in collator.encoded.first)


def test_learning_rates_held_in_tensors_are_filled_in_place(tiny_encoder, tiny_dataset):
    model, _, _ = tiny_setup(tiny_encoder, tiny_dataset)
    groups = _param_groups(model, OptimConfig(), lr_device=torch.device("cpu"))
    optimizer = torch.optim.AdamW(groups)
    held = [g["lr"] for g in optimizer.param_groups]
    set_learning_rates(optimizer, 0.5)
    for group, tensor in zip(optimizer.param_groups, held):
        assert group["lr"] is tensor and float(tensor) == pytest.approx(0.5 * group["base_lr"])


def batches_in_few_shapes(collator, pad_to):
    """Twelve batches in a few shapes (pairs padded to two lengths, a triple), each shape seen
    more often than the warm-up."""
    orders = [[0, 1], [2, 3], [4, 5], [1, 3], [0, 5], [2, 4], [1, 2], [3, 5]]
    return [collator(p, pad_to=pad_to) for p in orders] + [collator([0, 1, 2], pad_to=pad_to)] * 4


def run_steps(kind, model, batches, table, device, **kwargs):
    cuda = device.type == "cuda"
    optimizer = torch.optim.AdamW(_param_groups(model, OptimConfig(), device if cuda else None),
                                  fused=cuda, capturable=cuda)
    step = kind(model, optimizer, 1.0, device, "fp32", table, **kwargs)
    losses = []
    for batch in batches:
        step(batch.pin_memory() if cuda else batch)
        losses.append(step.take_loss())
    return step, losses


class CPUGraphs:
    """``steps.CudaGraphs``' stand-in on the CPU, true to what the step relies on: a capture runs
    nothing, a replay runs the recorded step on the graph's own input tensors and writes the
    gradients afresh (as a backward captured with no gradients does)."""

    def __init__(self, model, fail: str | None = None):
        self.model, self.fail = model, fail

    def side_stream(self):
        return contextlib.nullcontext()

    def capture(self, step):
        if self.fail:
            raise RuntimeError(self.fail)

        def replay():
            self.model.zero_grad(set_to_none=True)
            step()
        return SimpleNamespace(replay=replay)

    def synchronize(self):
        pass


def expected_counts(batches) -> dict:
    seen = Counter(b.shape_key() for b in batches).values()
    return {"graphs": sum(n > WARMUP for n in seen),
            "graph_steps": sum(max(0, n - WARMUP) for n in seen),
            "eager_steps": sum(min(n, WARMUP) for n in seen)}


def test_graphed_step_bookkeeping_matches_the_eager_step(tiny_encoder, tiny_dataset):
    """On the CPU stand-in: warm-up, capture, copy into the graph's inputs, replay; every batch
    trains exactly as the eager step trains it (a field left out of the copy would differ)."""
    device = torch.device("cpu")
    model, collator, table = tiny_setup(tiny_encoder, tiny_dataset)
    twin = copy.deepcopy(model)
    batches = batches_in_few_shapes(collator, GraphedStep.pad_to)
    _, eager_losses = run_steps(EagerStep, model, batches, table, device)
    graphed, graph_losses = run_steps(GraphedStep, twin, batches, table, device,
                                      cuda=CPUGraphs(twin))
    record = graphed.record()
    assert record["mode"] == "cuda-graph" and record["capture_failure"] is None
    counts = expected_counts(batches)
    assert {k: record[k] for k in counts} == counts and counts["graph_steps"] >= 4
    assert graph_losses == eager_losses
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(a, b), name


def test_a_failed_capture_is_reported_once_and_training_goes_on_eagerly(tiny_encoder,
                                                                       tiny_dataset):
    device = torch.device("cpu")
    model, collator, table = tiny_setup(tiny_encoder, tiny_dataset)
    twin = copy.deepcopy(model)
    batches = batches_in_few_shapes(collator, GraphedStep.pad_to)
    _, eager_losses = run_steps(EagerStep, model, batches, table, device)
    why = "operation not permitted when stream is capturing"
    with pytest.warns(RuntimeWarning, match="CUDA graph capture failed") as caught:
        graphed, graph_losses = run_steps(GraphedStep, twin, batches, table, device,
                                          cuda=CPUGraphs(twin, fail=why))
    assert len([w for w in caught if "capture failed" in str(w.message)]) == 1
    record = graphed.record()
    assert record["mode"] == "eager (capture failed)"
    assert record["capture_failure"] == f"RuntimeError: {why}"
    assert record["graphs"] == record["graph_steps"] == 0
    assert record["eager_steps"] == len(batches)
    assert graph_losses == eager_losses


@cuda
def test_a_cuda_graph_step_updates_the_model_exactly_as_the_eager_step(tiny_encoder,
                                                                        tiny_dataset):
    device = torch.device("cuda")
    model, collator, table = tiny_setup(tiny_encoder, tiny_dataset)
    model, table = model.to(device), table.to(device)
    twin = copy.deepcopy(model)
    batches = batches_in_few_shapes(collator, GraphedStep.pad_to)
    eager, eager_losses = run_steps(EagerStep, model, batches, table, device)
    graphed, graph_losses = run_steps(GraphedStep, twin, batches, table, device)
    record = graphed.record()
    assert record["capture_failure"] is None, record
    counts = expected_counts(batches)
    assert record["mode"] == "cuda-graph" and {k: record[k] for k in counts} == counts
    np.testing.assert_allclose(graph_losses, eager_losses, rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)


def train_tiny(encoder, dataset, device):
    """``loop.train`` on the tiny train split (also its valid split), 4 epochs of batches of 2."""
    from trainer.config import TrainConfig
    from trainer.loop import Prepared, Split, train

    model, collator, table = tiny_setup(encoder, dataset)
    model, table = model.to(device), table.to(device)
    gold = [list(t.tags) for t in dataset.tweets("train")]
    split = Split("train", collator.encoded, collator, gold)
    config = TrainConfig(data_dir="tiny", seed=0,
                         optim=OptimConfig(epochs=4, batch_size=2, patience=4))
    prep = Prepared(config, device, None, {}, model, {"train": split, "valid": split}, table)
    return train(prep)


def test_training_on_the_cpu_steps_eagerly(tiny_encoder, tiny_dataset):
    outcome = train_tiny(tiny_encoder, tiny_dataset, torch.device("cpu"))
    assert outcome.steps == {"mode": "eager", "eager_steps": 12}
    assert len(outcome.history) == 4 and all(np.isfinite(r["train_loss"])
                                             for r in outcome.history)


@cuda
def test_training_on_cuda_replays_graphs_and_records_how(tiny_encoder, tiny_dataset):
    outcome = train_tiny(tiny_encoder, tiny_dataset, torch.device("cuda"))
    assert outcome.steps["mode"] == "cuda-graph" and outcome.steps["graph_steps"] > 0
    assert all(np.isfinite(r["train_loss"]) for r in outcome.history)


def test_length_buckets_cover_every_example_once_with_less_padding_and_follow_the_generator():
    import numpy as np

    from trainer.loop import LengthBuckets

    lengths = np.random.default_rng(0).integers(3, 60, size=203)
    draw = LengthBuckets(lengths, 16, 4, torch.Generator().manual_seed(1))
    epoch = list(draw)
    assert len(epoch) == len(draw) == 13
    assert sorted(i for batch in epoch for i in batch) == list(range(203))
    again = list(LengthBuckets(lengths, 16, 4, torch.Generator().manual_seed(1)))
    assert epoch == again and list(draw) != epoch          # same seed, same order; new epoch
    padded = sum(len(b) * lengths[b].max() for b in epoch)
    plain = torch.randperm(203, generator=torch.Generator().manual_seed(1)).tolist()
    random_padded = sum(len(plain[i:i + 16]) * lengths[plain[i:i + 16]].max()
                        for i in range(0, 203, 16))
    assert padded < 0.8 * random_padded
