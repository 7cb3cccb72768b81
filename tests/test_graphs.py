"""Graphs through the real code path: feature files in the cache layout -> build-graphs -> HDF5."""
from __future__ import annotations

import hashlib
import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import cli
from conftest import SHARED_DATA, TINY_KEY, needs_shared_data
from pipeline.data import load_dataset
from pipeline.diagnostics import diagnose, overlap_at_k
from pipeline.errors import CacheMismatch
from pipeline.features import FeatureWriter
from pipeline.graph_store import Graph
from pipeline.graphs import GraphConfig, build_graphs, load_graph_manifest, read_graph

IDS = ["101", "102", "103", "104", "105", "106", "201", "202", "203", "301", "302", "303"]
TRAIN = IDS[:6]


def invoke(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def write_features(path, view, X, *, ids=IDS, valid=None, reason=None, space="sentence:test",
                   sha=None, dataset="tiny"):
    """A feature file written by the feature cache's own writer."""
    X = np.asarray(X, np.float32)
    valid = np.ones(len(ids), bool) if valid is None else np.asarray(valid)
    reason = reason or ["" if v else "missing image" for v in valid]
    digest = hashlib.sha256(X.tobytes() + space.encode()).hexdigest()
    attrs = {"view": view, "space": space, "source": "test", "fingerprint": digest,
             "dataset": dataset}
    writer = FeatureWriter(path, ids, attrs, with_sha=sha is not None)
    writer.write(np.arange(len(ids)), X, valid, reason, sha)
    return writer.finish()


def unit(rows, dims, seed):
    x = np.random.default_rng(seed).standard_normal((rows, dims)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def features(tmp_path):
    """text, image_global (same space) and object_types files; 104's image duplicates 101's."""
    folder = tmp_path / "feats"
    folder.mkdir()
    image = unit(12, 16, 1)
    image[3] = image[0]
    sha = [f"h{i}" for i in range(12)]
    sha[3] = sha[0]
    objects = np.abs(unit(12, 10, 2))
    objects[3] = objects[0]
    objects[5] = 0                                   # 106: no object detected
    text = unit(12, 16, 3)
    text[0] = image[0]                               # 101's text matches its own image (and 104)
    files = {"text": write_features(folder / "text.h5", "text", text,
                                    valid=[True] * 7 + [False] + [True] * 4,
                                    reason=[""] * 7 + ["empty caption"] + [""] * 4),
             "image_global": write_features(folder / "image.h5", "image_global", image, sha=sha),
             "object_types": write_features(folder / "objects.h5", "object_types", objects,
                                            space="objects:test", sha=sha)}
    manifest = {"dataset": "tiny", "views": {v: {"file": p.name} for v, p in files.items()}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def reference(xq, xb, k, forbid):
    """Brute-force cosine top-k with the forbidden (query, pool) pairs removed."""
    xq = xq / np.linalg.norm(xq, axis=1, keepdims=True)
    xb = xb / np.linalg.norm(xb, axis=1, keepdims=True)
    S = xq @ xb.T
    for q, b in forbid:
        S[q, b] = -np.inf
    return np.argsort(-S, axis=1, kind="stable")[:, :k], S


def test_cli_builds_both_relations_equal_to_brute_force(tiny_dir, features, tmp_path):
    result = invoke("build-graphs", "--data-dir", tiny_dir, "--artifacts", tmp_path / "a",
                    "--features", features / "manifest.json", "--k", 3, "--quiet")
    assert result.exit_code == 0, result.output
    assert "wrote inter:" in result.output and "wrote intra:" in result.output
    assert "hub_share" in result.output and "overlap@" not in result.output
    paths = load_graph_manifest(tmp_path / "a", TINY_KEY)
    assert sorted(paths) == ["inter", "intra"]
    inter = read_graph(paths["inter"])
    assert inter.query_ids == IDS and inter.pool_ids == IDS and inter.k == 3
    with h5py.File(features / "text.h5") as t, h5py.File(features / "image.h5") as i:
        xq, xb = t["features"][()], i["features"][()]
    forbid = [(q, q) for q in range(12)] + [(0, 3), (3, 0)]
    I_ref, S = reference(xq, xb, 3, forbid)
    live = ~inter.flagged
    assert inter.flagged.tolist() == [False] * 7 + [True] + [False] * 4
    assert inter.flag_reason[7] == "text: empty caption" and (inter.I[7] == -1).all()
    # ties allowed (images 101 and 104 are identical): same scores, each id scored as claimed
    np.testing.assert_allclose(inter.D[live], np.take_along_axis(S, I_ref, 1)[live], atol=1e-6)
    np.testing.assert_allclose(np.take_along_axis(S, inter.I, 1)[live], inter.D[live], atol=1e-6)
    assert (inter.I[live] == I_ref[live]).mean() > 0.9
    assert 3 not in inter.I[0] and 0 not in inter.I[3]
    assert inter.attrs["space"] == "sentence:test" and inter.attrs["pool"] == "all"
    assert inter.attrs["inputs"]["features:text"]["file"] == "text.h5"
    edge_index, edge_weight = inter.edges()
    with h5py.File(paths["inter"]) as h5:
        np.testing.assert_array_equal(h5["edge_index"][()], edge_index)
        assert h5["edge_index"].shape == (2, 11 * 3) and h5.attrs["complete"]
    assert (edge_index[1] != edge_index[0]).all()
    np.testing.assert_allclose(edge_weight, inter.D[live].ravel())


def test_intra_flags_empty_object_vectors_and_leaves_them_out_of_the_pool(tiny_dir, features,
                                                                          tmp_path):
    dataset = load_dataset(tiny_dir)
    [result] = build_graphs(dataset, tmp_path, GraphConfig(k=4, relations=("intra",)),
                            features=[features / "objects.h5"])
    intra = read_graph(result.path)
    assert intra.flagged.tolist() == [i == 5 for i in range(12)]
    assert intra.flag_reason[5] == "object_types: all-zero vector"
    assert "106" not in intra.pool_ids and len(intra.pool_ids) == 11
    ids, D = intra.neighbours(["101", "104", "106"])
    assert "104" not in ids[0] and "101" not in ids[1] and ids[2] == [] and np.isnan(D[2]).all()
    for q, row in zip(IDS, intra.neighbours(IDS)[0]):
        assert q not in row


def test_a_train_pool_holds_train_images_only(tiny_dir, features, tmp_path):
    result = invoke("build-graphs", "--data-dir", tiny_dir, "--artifacts", tmp_path,
                    "--features", features / "manifest.json", "--pool", "train", "--quiet")
    assert result.exit_code == 0, result.output
    for name, path in load_graph_manifest(tmp_path, TINY_KEY).items():
        graph = read_graph(path)
        assert graph.attrs["pool"] == "train"
        assert set(graph.pool_ids) <= set(TRAIN), name
        neighbours = {i for row in graph.neighbours(IDS)[0] for i in row}
        assert neighbours <= set(TRAIN) and neighbours
        held_out = [r for r, i in enumerate(IDS) if i not in TRAIN and not graph.flagged[r]]
        assert (graph.I[held_out] >= 0).all()          # all 6 train images are candidates
        train = [r for r in range(6) if not graph.flagged[r]]
        assert (graph.I[train, :3] >= 0).all() and (graph.I[0, 4:] == -1).all()  # 101: no self/104


def test_vectors_from_different_spaces_are_refused(tiny_dir, features, tmp_path):
    write_features(features / "clip.h5", "image_global", unit(12, 16, 4),
                   space="clip:ViT-B-32/openai")
    result = invoke("build-graphs", "--data-dir", tiny_dir, "--artifacts", tmp_path,
                    "--features", features / "text.h5", "--features", features / "clip.h5",
                    "--relation", "inter", "--no-import-rgcn")
    assert result.exit_code == 1
    assert result.output == ("Error: inter graph: text features are in space 'sentence:test' but "
                             "image_global features in 'clip:ViT-B-32/openai'; extract both with "
                             "the same encoder/bridge\n")


def test_graphs_are_reused_and_a_different_file_is_refused(tiny_dir, features, tmp_path):
    args = ("build-graphs", "--data-dir", tiny_dir, "--artifacts", tmp_path, "--features",
            features / "manifest.json", "--quiet")
    assert invoke(*args).exit_code == 0
    path = load_graph_manifest(tmp_path, TINY_KEY)["inter"]
    stamp = path.stat().st_mtime_ns
    again = invoke(*args)
    assert "reused inter:" in again.output and "reused intra:" in again.output
    assert path.stat().st_mtime_ns == stamp
    changed = invoke(*args, "--k", 4)                     # another k: another file, no clash
    assert "wrote inter:" in changed.output
    assert read_graph(load_graph_manifest(tmp_path, TINY_KEY)["inter"]).k == 4
    with h5py.File(path, "a") as h5:
        expected = h5.attrs["fingerprint"]
        h5.attrs["fingerprint"] = "0" * 64
    refused = invoke(*args)
    assert refused.exit_code == 1
    assert refused.output.startswith(f"Error: {path}: made by another configuration "
                                     f"(fingerprint 000000000000, expected {expected[:12]});")
    assert refused.output.count("\n") == 1
    assert "wrote inter:" in invoke(*args, "--overwrite").output
    assert read_graph(path).attrs["fingerprint"] == expected


def test_changed_features_give_a_new_graph(tiny_dir, features, tmp_path):
    dataset = load_dataset(tiny_dir)
    config = GraphConfig(k=2, relations=("inter",))
    [first] = build_graphs(dataset, tmp_path, config, features=[features / "manifest.json"])
    write_features(features / "text.h5", "text", unit(12, 16, 9))
    [second] = build_graphs(dataset, tmp_path, config, features=[features / "manifest.json"])
    assert not second.reused and second.path != first.path
    assert read_graph(second.path).attrs["inputs"]["features:text"]["sha256"] != \
        read_graph(first.path).attrs["inputs"]["features:text"]["sha256"]


def test_csls_ranks_exactly_and_damps_a_hub(tiny_dir, tmp_path):
    rng = np.random.default_rng(0)
    hub = unit(1, 16, 7)[0]
    image = unit(12, 16, 8) + 1.5 * hub * (np.arange(12) == 2)[:, None]
    text = unit(12, 16, 5) + 0.8 * hub
    folder = tmp_path / "f"
    folder.mkdir()
    files = [write_features(folder / "t.h5", "text", text),
             write_features(folder / "i.h5", "image_global", image + 0.01 * rng.random((12, 16)))]
    dataset = load_dataset(tiny_dir)
    graphs = {}
    for hubness in ("none", "csls"):
        config = GraphConfig(k=2, relations=("inter",), hubness=hubness, csls_k=3)
        [result] = build_graphs(dataset, tmp_path, config, features=files)
        graphs[hubness] = read_graph(result.path)
    assert diagnose(graphs["csls"])["nk_max"] < diagnose(graphs["none"])["nk_max"]
    with h5py.File(files[0]) as t, h5py.File(files[1]) as i:
        xq, xb = t["features"][()], i["features"][()]
    _, S = reference(xq, xb, 2, [])
    np.fill_diagonal(S, -np.inf)
    r_q = np.sort(S, axis=1)[:, -3:].mean(axis=1)
    r_b = np.sort(S, axis=0)[-3:, :].mean(axis=0)
    csls = 2 * S - r_q[:, None] - r_b[None, :]
    I_ref = np.argsort(-csls, axis=1, kind="stable")[:, :2]
    np.testing.assert_array_equal(graphs["csls"].I, I_ref)
    np.testing.assert_allclose(graphs["csls"].D, np.take_along_axis(S, I_ref, 1), atol=1e-6)
    assert graphs["csls"].attrs["ranking"] == "csls"


def test_diagnostics_on_a_hand_made_graph():
    I = np.array([[0, 1], [0, 2], [0, 1], [-1, -1]])
    D = np.array([[1.0, 0.5], [0.0, 0.2], [1.0, 0.0], [np.nan, np.nan]], np.float32)
    a = Graph(["q0", "q1", "q2", "q3"], ["a", "b", "c", "d", "e"], I, D,
              np.array([False, False, False, True]), {"relation": "inter"})
    row = diagnose(a)
    assert (row["hub_id"], row["hub_share"], row["nk_max"], row["coverage"]) == ("a", 1.0, 3, 0.6)
    assert (row["edges"], row["flagged"], row["top1_eq1"], row["edges_eq0"]) == (6, 1, 2 / 3, 1 / 3)
    assert row["nk_skew"] == pytest.approx(0.36317, abs=1e-5)   # N_k = 3, 2, 1, 0, 0
    b = Graph(["q2", "q1", "q0"], ["b", "a", "c"], np.array([[0, 2], [1, 0], [2, 0]]), D[:3],
              np.zeros(3, bool), {"relation": "inter", "source": "rgcn"})
    # q0: {a,b} vs {c,b} -> 1/2; q1: {a,c} vs {a,b} -> 1/2; q2: {a,b} vs {b,c} -> 1/2;
    # top-1 only: q1 agrees (a), q0 and q2 do not
    assert overlap_at_k(a, b, 2) == (0.5, 3)
    assert overlap_at_k(a, b, 1) == (pytest.approx(1 / 3), 3)


def rgcn_record(tweet, neighbours, first_score="0.9"):
    scores = " ".join([first_score] + ["0.5"] * 9)
    names = " ".join(f"{n}.jpg" for n in neighbours)
    tags = " ".join(t.replace("MISC", "OTHER") for t in tweet.tags)
    return "\n".join([" ".join(tweet.tokens), tags, f"{tweet.item_id}.jpg", scores, names,
                      scores, names]) + "\n"


def write_rgcn(tiny_dir, skip_last=True):
    dataset = load_dataset(tiny_dir)
    (tiny_dir / "rgcn").mkdir()
    for split, tweets in dataset.splits.items():
        kept = tweets[:-1] if skip_last else tweets
        text = "".join(rgcn_record(t, [i for i in IDS if i != t.item_id][:9] + ["999"])
                       for t in kept)
        (tiny_dir / "rgcn" / f"{split}_2.txt").write_text(text, encoding="utf-8")
    return dataset


def test_authors_lists_are_imported_with_missing_tweets_flagged(tiny_dir, features, tmp_path):
    write_rgcn(tiny_dir)
    result = invoke("build-graphs", "--data-dir", tiny_dir, "--artifacts", tmp_path,
                    "--features", features / "manifest.json", "--quiet")
    assert result.exit_code == 0, result.output
    assert "train_2.txt: no record for 1 tweet(s) (106): flagged" in result.output
    assert ("img2text: 1 neighbour id(s) are not tweets of tiny, 9 occurrences (most: 999 (9x)); "
            "kept in pool_id without features") in result.output
    assert "overlap@5 inter vs inter-rgcn:" in result.output
    graphs = load_graph_manifest(tmp_path, TINY_KEY)
    assert sorted(graphs) == ["inter", "inter-rgcn", "intra", "intra-rgcn"]
    theirs = read_graph(graphs["inter-rgcn"])
    assert theirs.k == 10 and theirs.attrs["source"] == "rgcn" and theirs.attrs["pool"] == "all"
    assert theirs.flagged.tolist() == [i in ("106", "203", "303") for i in IDS]
    assert theirs.pool_ids == IDS + ["999"] and theirs.attrs["pool_unknown"] == ["999"]
    ids, D = theirs.neighbours(["101"])
    assert ids[0] == IDS[1:10] + ["999"] and D[0, 0] == pytest.approx(0.9)
    mine = read_graph(graphs["inter"])
    value, common = overlap_at_k(mine, theirs, 5)
    assert common == 8                                  # 12 - 3 missing - 1 flagged text (105)
    again = invoke("build-graphs", "--data-dir", tiny_dir, "--artifacts", tmp_path,
                   "--features", features / "manifest.json", "--quiet")
    assert "reused inter-rgcn:" in again.output


def test_a_malformed_authors_file_is_refused_with_file_and_line(tiny_dir, tmp_path):
    write_rgcn(tiny_dir, skip_last=False)
    path = tiny_dir / "rgcn" / "valid_2.txt"
    lines = path.read_text().split("\n")
    lines[10] = "0.5 0.5 x"
    path.write_text("\n".join(lines))
    result = invoke("build-graphs", "--data-dir", tiny_dir, "--artifacts", tmp_path,
                    "--relation", "none")
    assert result.exit_code == 1
    assert result.output == f"Error: {path}:11: expected 10 numeric scores, got '0.5 0.5 x'\n"
    with pytest.raises(Exception, match=r"valid_2.txt:11: expected 10 numeric scores"):
        build_graphs(load_dataset(tiny_dir), tmp_path, GraphConfig(relations=()),
                     rgcn_dir=tiny_dir / "rgcn")


def test_an_altered_graph_file_is_refused_when_reused(tiny_dir, features, tmp_path):
    dataset = load_dataset(tiny_dir)
    config = GraphConfig(k=2, relations=("intra",))
    [result] = build_graphs(dataset, tmp_path, config, features=[features / "objects.h5"])
    with h5py.File(result.path, "a") as h5:
        h5.attrs["complete"] = False
    with pytest.raises(CacheMismatch, match="not marked complete"):
        build_graphs(dataset, tmp_path, config, features=[features / "objects.h5"])


@needs_shared_data
def test_the_authors_2015_lists_show_the_documented_hub():
    dataset = load_dataset(SHARED_DATA / "twitter2015")
    from pipeline.graph_import import import_rgcn
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        rgcn_dir = SHARED_DATA / "twitter2015" / "rgcn"
        results = {r.name: r for r in import_rgcn(dataset, rgcn_dir, tmp)}
        inter = read_graph(results["inter-rgcn"].path)
        intra = read_graph(results["intra-rgcn"].path)
    assert inter.flagged.sum() == 3 and inter.k == 10
    row = diagnose(inter, 5)
    assert row["hub_id"] == "74471" and round(row["hub_share"], 4) == 0.4509
    assert round(diagnose(intra, 5)["top1_eq1"], 4) == 0.6795


def test_exact_ties_are_broken_per_query_not_by_pool_order(tiny_dir, tmp_path):
    objects = np.zeros((12, 4), np.float32)
    objects[:, 0] = 1                                   # every image: the same single object
    files = [write_features(tmp_path / "o.h5", "object_types", objects, space="objects:test")]
    dataset = load_dataset(tiny_dir)
    chosen = {}
    for ties in ("index", "random"):
        config = GraphConfig(k=2, relations=("intra",), ties=ties)
        [result] = build_graphs(dataset, tmp_path, config, features=files)
        graph = read_graph(result.path)
        assert np.allclose(graph.D, 1.0, atol=1e-6)     # the cosine, not the shifted score
        chosen[ties] = diagnose(graph)
    assert chosen["index"]["hub_share"] == pytest.approx(11 / 12)   # row 0 for all but itself
    assert chosen["random"]["nk_max"] < chosen["index"]["nk_max"]
    assert chosen["random"]["coverage"] > chosen["index"]["coverage"]


def test_a_malformed_graph_manifest_is_one_clear_error(tmp_path):
    from pipeline.errors import CacheMismatch
    from pipeline.graphs import load_graph_manifest

    path = tmp_path / "graphs" / TINY_KEY / "manifest.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"dataset": "tiny"}')
    with pytest.raises(CacheMismatch) as err:
        load_graph_manifest(tmp_path, TINY_KEY)
    assert str(err.value) == (f"{path}: malformed manifest ('graphs'); run the build-graphs "
                              "stage again")
    path.write_text('{"dataset": "tiny", "graphs": {"inter": "inter-ours-x.h5"}}')
    assert load_graph_manifest(tmp_path, TINY_KEY) == {"inter": path.parent / "inter-ours-x.h5"}
