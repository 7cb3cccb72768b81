"""The tagger: tokenisation and shapes, every ablation switch, CRF decoding, masking of missing
images."""
from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pipeline.encoders import load_text_backbone
from pipeline.labels import entities, label_list
from tagger_fixtures import (tiny_dataset, tiny_encoder, tiny_image_inputs,  # noqa: F401
                             tiny_tagger)
from trainer.batches import SHAPE_FEATURES, encode, word_shape
from trainer.crf import allowed_transitions, log_likelihood, viterbi

LABELS = label_list()
LABEL2ID = {t: i for i, t in enumerate(LABELS)}
ABLATIONS = {"full": {}, "no-inter": {"inter": False}, "no-intra": {"intra": False},
             "no-graphs": {"inter": False, "intra": False}, "no-gate": {"gate": False},
             "text-only": {"text_only": True}, "no-shape": {"shape": False}}


def build(encoder, dataset, image, **flags):
    model, collator, table, config = tiny_tagger(encoder, dataset, image, **flags)
    return model, collator(list(range(len(collator.encoded)))).to("cpu", table), config


def test_word_shapes():
    assert len(word_shape("Obama", 0)) == len(SHAPE_FEATURES)
    named = lambda w, i=1: {n for n, v in zip(SHAPE_FEATURES, word_shape(w, i)) if v}  # noqa: E731
    assert named("Obama", 0) == {"init_cap", "first_word"}
    assert named("NASA") == {"init_cap", "all_caps"}
    assert named("iPhone") == {"inner_cap"}
    assert named("@user") == {"mention", "lower"}
    assert named("#NBA") == {"hashtag", "all_caps"}
    assert named("http://t.co/x1") == {"url", "lower", "has_digit"}
    assert named("2017") == {"has_digit", "all_digit"}
    assert named(":") == {"punct"}
    assert named("café") == {"lower", "non_ascii"}


def test_first_subword_alignment_keeps_every_word(tiny_encoder):
    tokenizer, _, _ = load_text_backbone(tiny_encoder)
    tweet = SimpleNamespace(item_id="x", tokens=("Obamaville", "\u00a0", "visits", "\x01"),
                            tags=("B-PER", "O", "O", "B-LOC"))
    enc = encode([tweet], tokenizer, LABEL2ID, max_subwords=128)
    assert len(enc.first[0]) == 4 and enc.truncated_words == 0
    pieces = tokenizer.convert_ids_to_tokens(enc.input_ids[0].tolist())
    assert [pieces[p] for p in enc.first[0]] == ["obama", "[UNK]", "visits", "[UNK]"]
    assert enc.labels[0].tolist() == [LABEL2ID[t] for t in tweet.tags]
    short = encode([tweet], tokenizer, LABEL2ID, max_subwords=8)   # CLS + 6 pieces + SEP
    assert len(short.first[0]) < 4 and short.truncated_words == 4 - len(short.first[0])


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_every_ablation_runs_and_changes_the_model(name, tiny_encoder, tiny_dataset):
    image = tiny_image_inputs(tiny_dataset, k=3)
    full, full_batch, _ = build(tiny_encoder, tiny_dataset, image)
    model, batch, config = build(tiny_encoder, tiny_dataset, image, **ABLATIONS[name])
    assert config.variant() == name
    loss = model.loss(batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.emit.weight.grad is not None
    if model.image is not None:
        assert model.image.attend.q.weight.grad.abs().sum() > 0
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    inputs = lambda b: {k for k, v in vars(b).items() if v is not None}  # noqa: E731
    if name == "full":
        assert count(model) == count(full)
    else:
        assert count(model) < count(full) or inputs(batch) != inputs(full_batch)
    slots = {"full": 7, "no-inter": 4, "no-intra": 4, "no-graphs": 1, "no-gate": 7, "no-shape": 7}
    if name == "text-only":
        assert batch.nodes is None and model.image is None
    else:  # own image + 3 neighbours per relation in use
        assert batch.nodes.shape[1] == slots[name]
        assert (batch.adjacency is None) == (name == "no-graphs")


def test_region_grids_are_pooled_by_attention_or_mean(tiny_encoder, tiny_dataset):
    image = tiny_image_inputs(tiny_dataset, dim=5, regions=4, k=3)
    for pool in ("attention", "mean"):
        model, batch, _ = build(tiny_encoder, tiny_dataset, image, region_pool=pool)
        assert batch.nodes_x.shape[-2:] == (4, 5)
        assert torch.isfinite(model.loss(batch))


def test_masked_neighbours_and_invalid_images_never_reach_the_output(tiny_encoder, tiny_dataset):
    image = tiny_image_inputs(tiny_dataset, k=3)
    model, batch, _ = build(tiny_encoder, tiny_dataset, image)
    model.eval()
    before = model.emissions(batch)
    # table row 0 is item 0's own image, which is invalid: it is referenced only through masked
    # slots (own = -1 and -1 neighbours gather row 0), so its values must not matter
    image.table[0] = 1e6
    _, batch2, _ = build(tiny_encoder, tiny_dataset, image)
    torch.testing.assert_close(model.emissions(batch2), before)
    # ... while a real neighbour's features do matter
    used = int(batch.nodes[1, 0])   # example 1's first inter-modal neighbour
    image.table[used] += 3.0
    _, batch3, _ = build(tiny_encoder, tiny_dataset, image)
    assert not torch.allclose(model.emissions(batch3)[1], before[1])


def is_valid_bio(tags) -> bool:
    previous = "O"
    for tag in tags:
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            return False
        previous = tag
    return True


def test_crf_decoding_returns_valid_bio(tiny_encoder, tiny_dataset):
    image = tiny_image_inputs(tiny_dataset, k=3)
    model, batch, _ = build(tiny_encoder, tiny_dataset, image)
    torch.nn.init.normal_(model.crf.transitions, std=5.0)   # make invalid paths tempting
    torch.nn.init.normal_(model.emit.weight, std=5.0)
    ids = model.decode(batch)
    lengths = batch.word_mask.sum(1).tolist()
    sequences = [[LABELS[i] for i in row[:n]] for row, n in zip(ids.tolist(), lengths)]
    assert all(is_valid_bio(s) for s in sequences)
    assert [len(s) for s in sequences] == [len(t.tokens) for t in tiny_dataset.tweets("train")]
    for s in sequences:  # valid BIO: conlleval and strict modes see the same entities
        assert entities(s, "conlleval") == entities(s, "strict")


@torch.no_grad()
def test_viterbi_equals_brute_force_and_pytorch_crf():
    from torchcrf import CRF
    torch.manual_seed(1)
    tags, length = 4, 4
    crf = CRF(tags, batch_first=True)
    emissions = torch.randn(3, length, tags)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    ours = viterbi(emissions, mask, crf.start_transitions, crf.transitions, crf.end_transitions)
    theirs = crf.decode(emissions, mask)
    for b, path in enumerate(theirs):
        assert ours[b, :len(path)].tolist() == path
        n = len(path)
        best = max(itertools.product(range(tags), repeat=n), key=lambda p: float(
            crf.start_transitions[p[0]] + crf.end_transitions[p[-1]]
            + sum(emissions[b, i, p[i]] for i in range(n))
            + sum(crf.transitions[p[i - 1], p[i]] for i in range(1, n))))
        assert list(best) == path


def test_allowed_transitions_follow_bio():
    start, trans = allowed_transitions(LABELS)
    i = LABELS.index
    assert start[i("B-PER")] and start[i("O")] and not start[i("I-PER")]
    assert trans[i("B-PER"), i("I-PER")] and trans[i("I-PER"), i("I-PER")]
    assert not trans[i("O"), i("I-PER")] and not trans[i("B-LOC"), i("I-PER")]


@pytest.mark.parametrize("length", [1, 2, 5, 8, 13])
def test_batched_crf_likelihood_equals_pytorch_crf(length):
    from torchcrf import CRF
    torch.manual_seed(length)
    crf = CRF(5, batch_first=True).double()
    for p in crf.parameters():
        torch.nn.init.normal_(p)
    emissions = torch.randn(4, length, 5, dtype=torch.float64, requires_grad=True)
    tags = torch.randint(0, 5, (4, length))
    lengths = torch.tensor([length, max(1, length - 1), 1, max(1, length // 2)])
    mask = torch.arange(length)[None] < lengths[:, None]
    params = [emissions, crf.start_transitions, crf.transitions, crf.end_transitions]
    reference = crf(emissions, tags, mask, reduction="none")
    ours = log_likelihood(emissions, tags, mask, *params[1:])
    torch.testing.assert_close(ours, reference)
    expected = torch.autograd.grad(reference.sum(), params, allow_unused=True)
    got = torch.autograd.grad(ours.sum(), params, allow_unused=True)
    for e, g in zip(expected, got):
        if e is not None:
            torch.testing.assert_close(g, e)


@pytest.mark.parametrize("name", ["full", "no-inter", "no-intra", "no-graphs"])
def test_the_collator_fills_the_slots_of_the_node_layout(name, tiny_encoder, tiny_dataset):
    from trainer.batches import NodeLayout

    image = tiny_image_inputs(tiny_dataset, k=3)
    model, collator, _, config = tiny_tagger(tiny_encoder, tiny_dataset, image, **ABLATIONS[name])
    layout = NodeLayout.of(config)
    assert model.image.layout == layout == collator.layout
    positions = list(range(len(collator.encoded)))
    batch, rows = collator(positions), collator.rows[positions]
    nodes = batch.nodes.numpy()
    assert nodes.shape[1] == layout.slots and batch.node_mask.shape[1] == layout.mask_slots
    assert (nodes[:, layout.own_slot][:, 0] == image.own[rows].clip(0)).all()
    assert (nodes[:, layout.inter_slots] == (image.inter[rows, :3].clip(0) if config.inter
                                             else np.empty((len(rows), 0)))).all()
    assert (nodes[:, layout.intra_slots] == (image.intra[rows, :3].clip(0) if config.intra
                                             else np.empty((len(rows), 0)))).all()


def test_the_model_reads_each_relation_from_its_own_slots(tiny_encoder, tiny_dataset):
    """With the inter-modal relation's projection zeroed, the inter slots cannot matter and the
    intra slots must; swapping the two relations' slots changes the output."""
    import dataclasses

    from trainer.batches import NodeLayout

    image = tiny_image_inputs(tiny_dataset, k=3)
    model, batch, config = build(tiny_encoder, tiny_dataset, image)
    layout = NodeLayout.of(config)
    proj = model.image.graphs.node_proj.lin
    with torch.no_grad():
        proj.weight[:proj.out_features // 2] = 0      # relation 0 is InterRG
    model.eval()
    before = model.emissions(batch)

    def moved(slots):
        x = batch.nodes_x.clone()
        x[:, slots] += 1.0
        return model.emissions(dataclasses.replace(batch, nodes_x=x))
    torch.testing.assert_close(moved(layout.inter_slots), before)
    assert not torch.allclose(moved(layout.intra_slots), before)
    assert not torch.allclose(moved(layout.own_slot), before)
    swapped = batch.nodes_x.clone()
    swapped[:, layout.inter_slots] = batch.nodes_x[:, layout.intra_slots]
    swapped[:, layout.intra_slots] = batch.nodes_x[:, layout.inter_slots]
    assert not torch.allclose(model.emissions(dataclasses.replace(batch, nodes_x=swapped)), before)


def test_a_batch_laid_out_for_another_model_is_refused(tiny_encoder, tiny_dataset):
    image = tiny_image_inputs(tiny_dataset, k=3)
    full, _, _ = build(tiny_encoder, tiny_dataset, image)
    _, other, _ = build(tiny_encoder, tiny_dataset, image, intra=False)
    with pytest.raises(ValueError, match="node slots"):
        full.emissions(other)
