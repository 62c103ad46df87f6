"""Model bundles: round trip, the torch module, and every way a bundle can be broken."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import cellsynth
from cellsynth.bundle.format import CONFIG_FILE, FORMAT_VERSION, LabelSpec
from cellsynth.bundle.load import load_bundle
from cellsynth.errors import BundleError
from cellsynth.files import sha256_file


@pytest.fixture
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the shared bundle that a test may damage."""
    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))


def _edit_config(path: Path, edit) -> None:
    cfg = json.loads((path / CONFIG_FILE).read_text())
    edit(cfg)
    (path / CONFIG_FILE).write_text(json.dumps(cfg))


def test_load_reports_contents(tiny_bundle: Path) -> None:
    b = cellsynth.load_bundle(tiny_bundle)
    assert b.config["format_version"] == FORMAT_VERSION
    assert len(b.genes) == b.architecture["n_genes"] == 100
    assert b.labels.keys == ["cell_type", "batch"]
    assert b.labels.vocabularies == {"cell_type": ["alpha", "beta", "gamma"], "batch": ["b1", "b2"]}
    # Every training combination is recorded with a positive count.
    assert sorted(c for c, _ in b.labels.combinations) == [
        (i, j) for i in range(3) for j in range(2)
    ]
    assert all(n > 0 for _, n in b.labels.combinations)
    assert b.schedule.num_train_timesteps == 1000
    assert b.prediction_type == "epsilon"
    assert b.preprocessing.genes == b.genes
    assert len(b.hash) == 64


def test_to_torch_returns_eval_module_with_saved_weights(tiny_bundle: Path) -> None:
    from safetensors.torch import load_file

    b = cellsynth.load_bundle(tiny_bundle)
    for which in ("ema", "model"):
        module = b.to_torch(weights=which)
        assert not module.training
        saved = load_file(str(b.weights_path(which)))
        for k, v in module.state_dict().items():
            torch.testing.assert_close(v, saved[k], rtol=0, atol=0)
    x = torch.randn(4, len(b.genes))
    t = torch.tensor([0, 10, 500, 999])
    labels = torch.tensor([[0, 0, 3], [1, 1, 0], [2, 1, 7], [1, 0, 8]])  # + the depth bin
    out = module(x, t, labels)
    assert out.shape == (4, len(b.genes)) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    # Trained weights are not the zero-initialised output layer any more.
    assert out.abs().sum() > 0


def test_ema_and_raw_weights_differ(tiny_bundle: Path) -> None:
    b = cellsynth.load_bundle(tiny_bundle)
    ema = b.to_torch("ema").state_dict()
    raw = b.to_torch("model").state_dict()
    assert any(not torch.equal(ema[k], raw[k]) for k in raw if raw[k].is_floating_point())


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no model bundle at .*not a directory"):
        load_bundle(tmp_path / "nowhere")


def test_missing_config(bundle_copy: Path) -> None:
    (bundle_copy / CONFIG_FILE).unlink()
    with pytest.raises(BundleError, match="config.json is missing"):
        load_bundle(bundle_copy)


def test_corrupt_config(bundle_copy: Path) -> None:
    (bundle_copy / CONFIG_FILE).write_text('{"format": "cellsynth-bundle", ')
    with pytest.raises(BundleError, match="config.json is corrupt: not valid JSON"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize(
    "version, hint", [(FORMAT_VERSION + 1, "upgrade cellsynth"), (0, "re-create")]
)
def test_other_format_version(bundle_copy: Path, version: int, hint: str) -> None:
    _edit_config(bundle_copy, lambda c: c.update(format_version=version))
    with pytest.raises(BundleError, match=f"format version {version}.*{hint}"):
        load_bundle(bundle_copy)


def test_not_a_cellsynth_bundle(bundle_copy: Path) -> None:
    _edit_config(bundle_copy, lambda c: c.update(format="diffusers"))
    with pytest.raises(BundleError, match="'format' is 'diffusers'"):
        load_bundle(bundle_copy)


def test_missing_required_entry(bundle_copy: Path) -> None:
    _edit_config(bundle_copy, lambda c: c.pop("schedule"))
    with pytest.raises(BundleError, match=r"lacks required entries: \['schedule'\]"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("which", ["model.safetensors", "ema.safetensors"])
def test_missing_weights(bundle_copy: Path, which: str) -> None:
    (bundle_copy / which).unlink()
    with pytest.raises(BundleError, match=f"incomplete: {which} is missing"):
        load_bundle(bundle_copy)


def test_weights_changed_after_saving(bundle_copy: Path) -> None:
    path = bundle_copy / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # flip bits in the last weight
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model.safetensors is corrupt: its SHA-256 differs"):
        load_bundle(bundle_copy)


def test_unreadable_weights(bundle_copy: Path) -> None:
    path = bundle_copy / "ema.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json header")
    _edit_config(bundle_copy, lambda c: c["weights"].update({"ema.safetensors": sha256_file(path)}))
    with pytest.raises(
        BundleError, match="ema.safetensors is corrupt: cannot be read as safetensors"
    ):
        load_bundle(bundle_copy)


def test_weights_that_do_not_fit_the_architecture(bundle_copy: Path) -> None:
    _edit_config(bundle_copy, lambda c: c["architecture"].update(hidden_size=64, depth=2))
    with pytest.raises(
        BundleError, match="do not match config.json: .*(missing tensors|shape mismatch)"
    ):
        load_bundle(bundle_copy)


def test_gene_count_inconsistent(bundle_copy: Path) -> None:
    _edit_config(bundle_copy, lambda c: c["architecture"].update(n_genes=99))
    with pytest.raises(BundleError, match="expects 99 genes but 100 are listed"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("edit", ["drop the last gene", "rename a gene"])
def test_a_consistently_edited_gene_list_is_refused(bundle_copy: Path, edit: str) -> None:
    # genes, the preprocessing record and the architecture all agree; the weights say otherwise
    # (a patched DiT has the same tensors for 99 and 100 genes, so only the stamp can tell).
    def consistent(cfg: dict) -> None:
        genes = cfg["genes"][:-1] if edit == "drop the last gene" else ["X", *cfg["genes"][1:]]
        cfg["genes"] = cfg["preprocessing"]["genes"] = genes
        cfg["architecture"]["n_genes"] = len(genes)

    _edit_config(bundle_copy, consistent)
    with pytest.raises(BundleError, match="trained on 100 genes .* the gene list was edited"):
        load_bundle(bundle_copy)


def test_label_sizes_inconsistent(bundle_copy: Path) -> None:
    _edit_config(bundle_copy, lambda c: c["labels"]["vocabularies"]["batch"].append("extra"))
    with pytest.raises(BundleError, match="label_sizes .* do not match the label vocabularies"):
        load_bundle(bundle_copy)


def test_unknown_architecture(bundle_copy: Path) -> None:
    _edit_config(bundle_copy, lambda c: c["architecture"].update(name="unet"))
    with pytest.raises(BundleError, match="unknown architecture 'unet'"):
        load_bundle(bundle_copy)


def test_bad_prediction_type(bundle_copy: Path) -> None:
    _edit_config(bundle_copy, lambda c: c.update(prediction_type="score"))
    with pytest.raises(BundleError, match="prediction_type 'score'"):
        load_bundle(bundle_copy)


def test_save_refuses_to_overwrite_and_leaves_no_partial_directory(tiny_bundle: Path) -> None:
    from cellsynth.bundle.save import save_bundle

    b = load_bundle(tiny_bundle)
    module = b.to_torch()
    kwargs = dict(
        architecture=b.architecture,
        schedule=b.schedule,
        prediction_type=b.prediction_type,
        preprocessing=b.preprocessing,
        labels=b.labels,
        model_state=module.state_dict(),
    )
    with pytest.raises(FileExistsError, match="already exists"):
        save_bundle(tiny_bundle, **kwargs)
    # Failing half-way through writing: nothing may appear under the target or beside it.
    target = tiny_bundle.parent / "broken-save"
    bad = dict(kwargs, ema_state={"weight": "not a tensor"})
    with pytest.raises(AttributeError):
        save_bundle(target, **bad)
    assert not target.exists()
    assert not [p for p in tiny_bundle.parent.iterdir() if "partial" in p.name]


def test_label_spec_from_codes_counts_combinations() -> None:
    codes = np.array([[0, 1], [0, 1], [1, 0], [2, 1]])
    spec = LabelSpec.from_codes(["a", "b"], {"a": ["x", "y", "z"], "b": ["u", "v"]}, codes)
    assert spec.sizes == [3, 2]
    assert spec.combinations == [((0, 1), 2), ((1, 0), 1), ((2, 1), 1)]
    assert LabelSpec.from_dict(spec.to_dict()) == spec
    bad = spec.to_dict()
    bad["combinations"].append({"codes": [3, 0], "count": 1})
    with pytest.raises(ValueError, match="outside the vocabularies"):
        LabelSpec.from_dict(bad)


def test_weight_files_get_the_same_mode_as_config(tiny_bundle: Path) -> None:
    modes = {p.name: p.stat().st_mode & 0o777 for p in tiny_bundle.iterdir() if p.is_file()}
    assert modes["ema.safetensors"] == modes["model.safetensors"] == modes[CONFIG_FILE], modes


@pytest.mark.parametrize("name", ["kang-dit", "kang-scdg"])
def test_shipped_weights_carry_the_gene_stamp(name: str, tmp_path: Path) -> None:
    from cellsynth.bundle.format import SHIPPED_DIR

    copy = Path(shutil.copytree(SHIPPED_DIR / name, tmp_path / name))
    where = copy / "autoencoder" if name == "kang-scdg" else copy

    def drop_last_gene(cfg: dict) -> None:
        cfg["genes"] = cfg["preprocessing"]["genes"] = cfg["genes"][:-1]
        cfg["architecture"]["n_genes"] = len(cfg["genes"])

    _edit_config(where, drop_last_gene)
    with pytest.raises(BundleError, match="trained on 2000 genes .* the gene list was edited"):
        load_bundle(where)


def test_a_generation_run_reads_each_bundle_file_once(monkeypatch) -> None:
    """A bundle is loaded and validated once per run and passed on; its autoencoder, gene table
    and exports manifest are read once and kept on it."""
    import collections

    import cellsynth

    reads: collections.Counter = collections.Counter()
    original = Path.read_text

    def counting(self, *args, **kwargs):
        reads[(self.parent.name, self.name)] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", counting)
    cellsynth.generate("kang-scdg", n_cells=8, steps=2, seed=0, engine="onnxruntime")
    bundle_files = {k: n for k, n in reads.items() if k[1] in ("config.json", "exports.json")}
    assert bundle_files == {
        ("kang-scdg", "config.json"): 1,
        ("autoencoder", "config.json"): 1,
        ("kang-scdg", "exports.json"): 1,
        ("autoencoder", "exports.json"): 1,
    }


def test_the_exports_manifest_is_kept_and_re_read_when_it_changes(bundle_copy: Path) -> None:
    from cellsynth.bundle.exports import read_exports, record_export

    bundle = load_bundle(bundle_copy)
    assert read_exports(bundle)["onnx"] == {}
    produced = bundle_copy.parent / "model.onnx"
    produced.write_bytes(b"not really onnx")
    record_export(bundle, "onnx", "fp32", produced, {"precision": "fp32"})
    manifest = bundle.exports()
    assert manifest["onnx"]["fp32"]["file"] == "onnx/model.onnx"  # seen without reloading
    manifest["onnx"].clear()  # a copy: the kept manifest is not changed by its readers
    assert read_exports(bundle)["onnx"]["fp32"]["precision"] == "fp32"
