"""Training steps: batch padding to few shapes (what CUDA graphs need) changes no result; on a
GPU, a step replayed as a CUDA graph updates the model exactly as the eager step does."""
from __future__ import annotations

import copy
from collections import Counter

import numpy as np
import pytest
import torch

from pipeline.encoders import load_text_backbone
from pipeline.labels import label_list
from tagger_fixtures import tiny_dataset, tiny_encoder, tiny_image_inputs  # noqa: F401 (fixtures)
from trainer.batches import Collator, encode
from trainer.config import ModelConfig, OptimConfig
from trainer.loop import _param_groups
from trainer.model import Tagger
from trainer.steps import WARMUP, EagerStep, GraphedStep, set_learning_rates

LABELS = label_list()
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def tiny_setup(encoder, dataset, **flags):
    """A tiny full model (no dropout), its collator over the train split and the node table."""
    torch.manual_seed(0)
    image = tiny_image_inputs(dataset, k=3)
    config = ModelConfig(encoder=encoder, k=3, graph_dim=8, heads=2, dropout=0.0, **flags)
    tokenizer, backbone, _ = load_text_backbone(encoder)
    tweets = dataset.tweets("train")
    encoded = encode(tweets, tokenizer, {t: i for i, t in enumerate(LABELS)}, config.max_subwords)
    rows = np.array([image.row_of[t.item_id] for t in tweets])
    collator = Collator(encoded, tokenizer.pad_token_id, image if config.uses_image else None,
                        rows, config.inter, config.intra, config.k)
    model = Tagger(config, backbone, LABELS, image.node_shape if config.uses_image else None)
    table = torch.from_numpy(image.table) if config.uses_image else None
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
    set_learning_rates(optimizer, [g["base_lr"] for g in optimizer.param_groups], 0.5)
    for group, tensor in zip(optimizer.param_groups, held):
        assert group["lr"] is tensor and float(tensor) == pytest.approx(0.5 * group["base_lr"])


def batches_in_few_shapes(collator, pad_to):
    """Twelve batches in a few shapes (pairs padded to two lengths, a triple), each shape seen
    more often than the warm-up."""
    orders = [[0, 1], [2, 3], [4, 5], [1, 3], [0, 5], [2, 4], [1, 2], [3, 5]]
    return [collator(p, pad_to=pad_to) for p in orders] + [collator([0, 1, 2], pad_to=pad_to)] * 4


def run_steps(kind, model, batches, table, device):
    optimizer = torch.optim.AdamW(_param_groups(model, OptimConfig(), lr_device=device),
                                  fused=True, capturable=True)
    step = kind(model, optimizer, 1.0, device, "fp32", table)
    losses = []
    for batch in batches:
        step(batch.pin_memory())
        losses.append(step.take_loss())
    return step, losses


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
    seen = Counter(b.shape_key() for b in batches).values()
    assert record["mode"] == "cuda-graph"
    assert record["graphs"] == sum(n > WARMUP for n in seen) >= 2
    assert record["graph_steps"] == sum(max(0, n - WARMUP) for n in seen) >= 4
    np.testing.assert_allclose(graph_losses, eager_losses, rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)


@cuda
def test_training_on_cuda_replays_graphs_and_records_how(tiny_encoder, tiny_dataset):
    from trainer.loop import Split, train

    device = torch.device("cuda")
    model, collator, table = tiny_setup(tiny_encoder, tiny_dataset)
    model, table = model.to(device), table.to(device)
    gold = [list(t.tags) for t in tiny_dataset.tweets("train")]
    split = Split("train", collator.encoded, collator, gold)
    optim = OptimConfig(epochs=4, batch_size=2, patience=4)
    outcome = train(model, split, split, optim, device, torch.Generator().manual_seed(0), table)
    assert outcome.steps["mode"] == "cuda-graph" and outcome.steps["graph_steps"] > 0
    assert all(np.isfinite(r["train_loss"]) for r in outcome.history)
