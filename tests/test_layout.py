"""The house rules of the source tree, checked by parsing it (docs/architecture.md says why).

- The runtime (python/cellsynth) never imports cellsynth.training or cellsynth.export; the one way
  in is cellsynth.torch_entry, which imports them by name when a PyTorch job runs.
- No module imports another module's private name: what two modules share is public in one home.
- ``import cellsynth`` and ``from cellsynth import _core`` run no heavy import.
- One version source.
"""

from __future__ import annotations

import ast
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

import cellsynth

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "python" / "cellsynth"
TORCH_ROOMS = ("cellsynth.training", "cellsynth.export")
TORCH_ENTRY = RUNTIME / "torch_entry.py"


def _sources(*folders: Path) -> list[Path]:
    return sorted(p for folder in folders for p in folder.rglob("*.py"))


def _imported_modules(tree: ast.AST) -> list[tuple[int, str, list[str]]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module, [a.name for a in node.names]))
    return found


def test_the_runtime_never_imports_the_torch_rooms():
    bad = []
    for path in _sources(RUNTIME):
        if path == TORCH_ENTRY:
            continue
        tree = ast.parse(path.read_text())
        for line, module, names in _imported_modules(tree):
            full = [module] + [f"{module}.{n}" for n in names]
            if any(m == r or m.startswith(r + ".") for m in full for r in TORCH_ROOMS):
                bad.append(f"{path.relative_to(ROOT)}:{line}: {module}")
        # no detour through importlib either: a module path as a string names the door
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if node.value.startswith(TORCH_ROOMS) and path.name != "__init__.py":
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: '{node.value}'")
    assert not bad, "runtime files reaching into training/export:\n" + "\n".join(bad)


def test_the_torch_entry_imports_only_by_name_when_called():
    tree = ast.parse(TORCH_ENTRY.read_text())
    top_level = [
        m
        for node in tree.body
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for _, m, _ in _imported_modules(node)
    ]
    assert not [m for m in top_level if m.startswith(TORCH_ROOMS) or m == "torch"]


def test_no_module_imports_a_private_name_of_another():
    bad = []
    for path in _sources(RUNTIME, ROOT / "training", ROOT / "export", ROOT / "benchmarks"):
        for line, module, names in _imported_modules(ast.parse(path.read_text())):
            if not module.startswith("cellsynth"):
                continue
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            private = [n for n in private if n not in ("_core",)]  # the compiled core's name
            if private:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {module} -> {private}")
    assert not bad, "\n".join(bad)


def test_importing_the_package_or_the_core_loads_nothing_heavy():
    code = (
        "import sys, cellsynth; from cellsynth import _core; "
        "mods = sorted(m for m in sys.modules if m.startswith('cellsynth')); print(mods); "
        "heavy = [m for m in ('torch', 'anndata', 'pandas', 'scipy', 'onnxruntime', 'sklearn') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120
    ).stdout.splitlines()
    assert eval(out[0]) == [
        "cellsynth",
        "cellsynth._core",
        "cellsynth._version",
        "cellsynth.errors",
    ]
    assert eval(out[1]) == []


def test_the_public_api_is_at_the_top():
    for name in cellsynth.__all__:
        assert getattr(cellsynth, name) is not None, name
        assert name in dir(cellsynth)
    from cellsynth.bundle.load import load_bundle
    from cellsynth.generation.run import generate

    assert cellsynth.generate is generate and cellsynth.load_bundle is load_bundle
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        cellsynth.nope  # noqa: B018


def test_train_names_the_three_models():
    with pytest.raises(ValueError, match="model must be one of dit, autoencoder, scdg"):
        cellsynth.train("vae", "kang", "out")
    with pytest.raises(ValueError, match="needs autoencoder="):
        cellsynth.train("scdg", "kang", "out", labels=["cell_type"])


def test_train_autoencoder_through_the_top_level(tmp_path, wu2020_adata):
    from cellsynth.training.train_autoencoder import train_autoencoder_bundle

    options = dict(config="tiny", epochs=1, n_top_genes=50, likelihood="mse", progress=False)
    via_api = cellsynth.train(
        "autoencoder", wu2020_adata, tmp_path / "a", labels="source", **options
    )
    direct = train_autoencoder_bundle(
        wu2020_adata, tmp_path / "b", label_keys=["source"], **options
    )
    a, b = cellsynth.load_bundle(via_api), cellsynth.load_bundle(direct)
    assert a.kind == b.kind == "autoencoder" and a.genes == b.genes
    # same seed, same data, same options: the same weights
    from safetensors.numpy import load_file

    wa, wb = load_file(a.weights_path("model")), load_file(b.weights_path("model"))
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)


def test_one_version_source():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert importlib.metadata.version("cellsynth") == cellsynth.__version__


def test_the_core_stub_lists_every_name_of_the_core():
    """python/cellsynth/_core.pyi (pybind11-stubgen, from a CUDA build) keeps up with bindings."""
    from cellsynth import _core

    stub = ast.parse((RUNTIME / "_core.pyi").read_text())
    listed = next(
        ast.literal_eval(node.value)
        for node in stub.body
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "__all__"
    )
    defined = {
        getattr(node, "name", None) or getattr(getattr(node, "target", None), "id", None)
        for node in stub.body
    }
    present = {n for n in dir(_core) if not n.startswith("_")}
    assert set(listed) <= defined
    assert present <= set(listed), f"not in the stub: {sorted(present - set(listed))}"
    if _core.cuda_compiled:  # a CPU-only build lacks the CUDA runtime's classes
        assert set(listed) == present


MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 85  # of code, docstring excluded; a longer one says why ("Long because:")


def _code_lines(fn: ast.FunctionDef, source_lines: list[str]) -> tuple[int, str]:
    body = fn.body
    has_doc = isinstance(body[0], ast.Expr) and isinstance(
        getattr(body[0], "value", None), ast.Constant
    )
    start = body[0].end_lineno + 1 if has_doc and len(body) > 1 else body[0].lineno
    head = "".join(source_lines[fn.lineno - 1 : start + 2])  # the def line to the first code
    return fn.end_lineno - start + 1, head


def test_runtime_files_and_functions_stay_small():
    long_files, long_functions = [], []
    for path in _sources(RUNTIME):
        text = path.read_text()
        lines = text.splitlines(keepends=True)
        if len(lines) > MAX_FILE_LINES:
            long_files.append(f"{path.relative_to(ROOT)}: {len(lines)} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n, head = _code_lines(node, lines)
                if n > MAX_FUNCTION_LINES and "Long because:" not in head:
                    long_functions.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} {n}")
    assert not long_files, long_files
    assert not long_functions, long_functions
