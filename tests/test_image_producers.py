"""The image views are producers (pipeline/producers.py): extract's batched pass and predict call
the same ones, so a new image gets the vectors, valid flag and reason its pool row got."""
from __future__ import annotations

import numpy as np

from pipeline.data import load_dataset
from pipeline.loaders import load_encoder
from pipeline.extract import ExtractConfig, run_extract
from pipeline.features import read_features
from pipeline.producers import CaptionText, ImageViews, Item, LabelPhrase
from test_extract import BROKEN, bert, image_dir  # noqa: F401 (fixtures)

CNN = "efficientnet-lite0:random"


def test_extract_and_the_producers_give_the_same_image_rows(tiny_dir, tmp_path, bert, image_dir):
    summary = run_extract(ExtractConfig(
        data_dir=tiny_dir, artifacts=tmp_path, captions=None, image_dir=image_dir,
        views=("region_grid", "object_types", "image_global"), image_encoder=CNN,
        text_encoder=bert, batch_size=4, workers=0))
    dataset = load_dataset(tiny_dir, None, image_dir)
    items = [Item(image=dataset.images.get(i)) for i in dataset.item_ids()]
    model = load_encoder(CNN, "cpu", "fp32")
    computed = ImageViews(model, ("region_grid", "object_types")).compute(items)
    computed["image_global"] = LabelPhrase(model, CaptionText(load_encoder(bert, "cpu")),
                                           3).compute(items)
    for view, got in computed.items():
        stored = read_features(summary["views"][view]["path"])
        assert got.reasons == stored.reason, view
        assert {i: r for i, r in zip(stored.item_ids, got.reasons) if r} == BROKEN
        np.testing.assert_array_equal(got.valid, stored.valid)
        np.testing.assert_allclose(got.vectors, stored.features, atol=1e-4, err_msg=view)


def test_no_decodable_image_gives_invalid_rows_of_the_right_shape(tmp_path):
    model = load_encoder(CNN, "cpu", "fp32")
    got = ImageViews(model, ("region_grid",)).compute([Item(image=tmp_path / "none.jpg")])
    grid = got["region_grid"]
    assert grid.vectors.shape == (1, 49, 1280) and not grid.vectors.any()
    assert grid.reasons == ["missing image"] and not grid.valid.any()
