"""Checkpoints that lie or are damaged fail in one line naming the file, before any memory
is spent on the model they describe."""

from __future__ import annotations

import json
import struct

import pytest
import torch

import rnnzoo
from rnnzoo.models import build_model, checkpoint, save
from rnnzoo.models.checkpoint import load_tensors, save_tensors


def _saved(tmp_path, layer="lstm", **changes):
    """A small model saved in tmp_path, its config then rewritten with `changes`."""
    torch.manual_seed(0)
    model = build_model(layer=layer, d_model=16, num_layers=2, vocab_size=256)
    save(model, tmp_path)
    tensors, meta = load_tensors(tmp_path / "model.safetensors")
    config = dict(json.loads(meta["rnnzoo.config"]), **changes)
    save_tensors(tmp_path / "model.safetensors", tensors,
                 dict(meta, **{"rnnzoo.config": json.dumps(config)}))
    return tmp_path / "model.safetensors"


def _spy_builds(monkeypatch):
    """Record the default device of every SequenceModel the loader builds; a model built
    off the meta device with a forged config would allocate it, so it fails the test."""
    built, real = [], checkpoint.SequenceModel

    def spy(config):
        device = torch.empty(0).device.type
        built.append(device)
        if device != "meta" and config.d_model > 1000:
            raise AssertionError(f"built a d_model={config.d_model} model on {device} before "
                                 f"checking its tensors")
        return real(config)

    monkeypatch.setattr(checkpoint, "SequenceModel", spy)
    return built


@pytest.mark.parametrize("layer", ["lstm", "s5"])
def test_forged_config_fails_before_building_the_model(tmp_path, monkeypatch, layer):
    """The issue's file: a small model.safetensors whose config says d_model=100000 and
    num_layers=64 (80 GB). It fails in one line, and only a meta-device model was built
    (s5's HiPPO initialisation now builds there too); an honest file loads as before."""
    built = _spy_builds(monkeypatch)
    torch.manual_seed(0)
    honest = build_model(layer=layer, d_model=8, num_layers=2, vocab_size=11)
    save(honest, tmp_path / "honest")
    tokens = torch.randint(0, 11, (2, 5))
    assert torch.equal(rnnzoo.load(tmp_path / "honest")(tokens)[0], honest(tokens)[0])
    assert built == ["meta", "cpu"]  # the loader checks on meta, then builds
    built.clear()
    path = _saved(tmp_path, layer, d_model=100_000, num_layers=64)
    assert path.stat().st_size < 200_000
    with pytest.raises(ValueError, match=r"does not fit the model of its config.*"
                                         r"shape differs: embed\.weight \(256, 16\) != "
                                         r"\(256, 100000\)") as e:
        rnnzoo.load(tmp_path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    assert built == ["meta"]


def test_layer_that_cannot_be_built_on_meta_still_checks_the_sizes(tmp_path, monkeypatch):
    """If a layer's construction needs real values, the loader falls back to the sizes it
    can read from the tensors alone (the final norm's width, the number of blocks)."""
    path = _saved(tmp_path, d_model=100_000)
    _spy_builds(monkeypatch)

    def no_meta(config, source):
        raise NotImplementedError("this layer reads values while it is built")

    monkeypatch.setattr(checkpoint, "_skeleton", no_meta)
    with pytest.raises(ValueError, match=r"d_model=100000, norm\.weight \(16,\)") as e:
        rnnzoo.load(tmp_path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    _saved(tmp_path, num_layers=64)
    with pytest.raises(ValueError, match="num_layers=64, tensors of 2 blocks"):
        rnnzoo.load(tmp_path)


def _damage(path, offset, data):
    buf = bytearray(path.read_bytes())
    buf[offset:offset + len(data)] = data
    path.write_bytes(bytes(buf))


@pytest.mark.parametrize("damage,message", [
    (lambda n: (20, b"\xff\xfe"), r"header is not UTF-8 text: byte 0xff at offset 12"),
    (lambda n: (8, b"["), r"header is not valid JSON: .* at line 1, column"),
    (lambda n: (8 + n - 1, b"\x00"), r"header is not valid JSON"),
    (lambda n: (0, struct.pack("<Q", 10**9)), r"header length 1000000000 exceeds the file size"),
])
def test_damaged_header_names_the_file(tmp_path, damage, message):
    path = _saved(tmp_path)
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    _damage(path, *damage(n))
    with pytest.raises(ValueError, match=message) as e:
        rnnzoo.load(tmp_path)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


@pytest.mark.parametrize("entry,message", [
    ({"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}, r"needs 12 bytes, its data_offsets give 8"),
    ({"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}, r"has shape \[-1\], not a list of sizes"),
    ({"dtype": "F32", "shape": "3", "data_offsets": [0, 12]}, r"has shape '3'"),
    ({"dtype": "F32", "shape": [3], "data_offsets": [0]}, r"data_offsets \[0\], not \[begin, end\]"),
    ({"dtype": "X9", "shape": [3], "data_offsets": [0, 12]}, r"unsupported dtype 'X9'"),
    ({"shape": [3]}, r"needs dtype, shape and data_offsets"),
    ([1, 2], r"needs dtype, shape and data_offsets"),
])
def test_damaged_header_entries_fail_in_one_line(tmp_path, entry, message):
    """Entries the old reader met with a KeyError, a TypeError or a reshape error."""
    head = json.dumps({"t": entry}).encode()
    head += b" " * (-len(head) % 8)
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(head)) + head + bytes(12))
    with pytest.raises(ValueError, match=message) as e:
        load_tensors(path)
    assert str(e.value).startswith(f"{path} is not a valid safetensors file") and \
        "\n" not in str(e.value)


def test_header_that_is_not_an_object_or_bad_metadata(tmp_path):
    path = tmp_path / "x.safetensors"
    for header, message in ((b"[1, 2]  ", "the header is a JSON list"),
                            (b'{"__metadata__": {"a": 1}}    ', "__metadata__ must map strings"),
                            (b'{"__metadata__": {"rnnzoo.complex": "[\\"z\\"]"}}', "lists 'z'")):
        path.write_bytes(struct.pack("<Q", len(header)) + header)
        with pytest.raises(ValueError, match=message):
            load_tensors(path)


def test_config_json_that_is_not_utf8_or_json_names_the_file(tmp_path):
    """A model.safetensors without config metadata reads config.json next to it."""
    torch.manual_seed(0)
    model = build_model(layer="lstm", d_model=8, num_layers=1, vocab_size=11)
    save(model, tmp_path)
    save_tensors(tmp_path / "model.safetensors", model.state_dict())  # no metadata
    assert rnnzoo.load(tmp_path).config.d_model == 8
    config = tmp_path / "config.json"
    config.write_bytes(b'{"layer": "lstm\xff"}')
    with pytest.raises(ValueError, match=r"config\.json is not UTF-8 text: byte 0xff at offset "
                                         r"15") as e:
        rnnzoo.load(tmp_path)
    assert str(config) in str(e.value)
    config.write_text('{"layer": "lstm",}')
    with pytest.raises(ValueError, match=r"config\.json is not valid JSON: .* line 1, column"):
        rnnzoo.load(tmp_path)
    config.write_text('["lstm"]')
    with pytest.raises(ValueError, match=r"model config is a JSON list, not an object"):
        rnnzoo.load(tmp_path)


@pytest.mark.parametrize("name", [i.name for i in rnnzoo.list_layers()])
def test_every_layer_builds_on_the_meta_device(name):
    """What the loader checks a checkpoint against: the model built on the meta device has
    the real model's tensor shapes, and no memory (s5 built its HiPPO eigenvectors with a
    data-dependent mask, which the meta device cannot run)."""
    info = rnnzoo.registry.get_layer_info(name)
    options = dict(info.tiny)
    d_model = options.pop("d_model", 8)
    config = dict(layer=name, d_model=d_model, num_layers=2, vocab_size=11, mlp_ratio=2.0,
                  layer_options=options)
    skeleton = checkpoint._skeleton(config, "test")
    real = checkpoint.build_saved(config, "test")
    assert {k: v.shape for k, v in skeleton.state_dict().items()} == \
        {k: v.shape for k, v in real.state_dict().items()}
    off_meta = [k for k, t in skeleton.state_dict().items() if not t.is_meta]
    assert not off_meta, off_meta


@pytest.mark.parametrize("kind", ["dsr", "chimera"])
def test_forged_config_of_another_model_kind_fails_before_building_it(tmp_path, monkeypatch,
                                                                       kind):
    """The dsr and chimera kinds were built from the config's sizes before the tensors were
    checked: a small file whose config says latent_size (d_model) 2**22 allocated a 64 TB
    matrix (a RuntimeError, or the OOM killer). Now they are checked on the meta device."""
    from rnnzoo.grid.chimera import ChimeraConfig, ChimeraForecaster
    from rnnzoo.models.dsr import DSRConfig, DSRModel
    torch.manual_seed(0)
    model = DSRModel(DSRConfig(cell="plrnn", observation_dim=3, latent_size=8)) \
        if kind == "dsr" else ChimeraForecaster(ChimeraConfig(channels=3, d_model=8))
    size = "latent_size" if kind == "dsr" else "d_model"
    real, built = checkpoint.MODEL_KINDS[kind], []

    def spy(config, source):
        device = torch.empty(0).device.type
        built.append(device)
        if device != "meta" and config[size] > 1000:
            raise AssertionError(f"built {size}={config[size]} on {device} before checking")
        return real(config, source)

    monkeypatch.setitem(checkpoint.MODEL_KINDS, kind, spy)
    save_tensors(tmp_path / "honest.safetensors", model.state_dict(),
                 {"rnnzoo.config": model.config.to_json()})
    loaded = rnnzoo.load(tmp_path / "honest.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(),
                                                 model.state_dict().values()))
    assert built == ["meta", "cpu"]
    built.clear()
    config = dict(json.loads(model.config.to_json()), **{size: 2**22})
    path = tmp_path / "model.safetensors"
    save_tensors(path, model.state_dict(), {"rnnzoo.config": json.dumps(config)})
    with pytest.raises(ValueError, match=r"does not fit the model of its config.*shape "
                                         r"differs") as e:
        rnnzoo.load(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    assert built == ["meta"]


def test_entries_torch_cannot_take_fail_in_one_line(tmp_path):
    """A size past int64 (a TypeError from reshape), a BOOL tensor holding bytes other than
    0/1 (undefined for torch), a header nested past the recursion limit (RecursionError):
    each is now one ValueError naming the file. (parse_json, io.py, serves every JSON read.)"""
    path = tmp_path / "model.safetensors"
    for entry, body, message in (
            ({"dtype": "F32", "shape": [2**64, 0], "data_offsets": [0, 0]}, b"",
             r"has shape \[18446744073709551616, 0\], not a list of sizes"),
            ({"dtype": "BOOL", "shape": [4], "data_offsets": [0, 4]}, bytes([0, 1, 2, 255]),
             r"tensor 't' is BOOL but holds bytes other than 0 and 1")):
        head = json.dumps({"t": entry}).encode()
        head += b" " * (-len(head) % 8)
        path.write_bytes(struct.pack("<Q", len(head)) + head + body)
        with pytest.raises(ValueError, match=message) as e:
            load_tensors(path)
        assert str(e.value).startswith(f"{path} is not a valid safetensors file")
    head = b"[" * 100_000 + b"]" * 100_000
    path.write_bytes(struct.pack("<Q", len(head)) + head)
    with pytest.raises(ValueError, match=r"safetensors header is not JSON rnnzoo reads: nested "
                                         r"deeper than \d+ levels"):
        load_tensors(path)
    from rnnzoo.io import parse_json
    with pytest.raises(ValueError, match=r"^x\.json is not JSON rnnzoo reads"):
        parse_json('{"a": ' * 100_000, "x.json")
