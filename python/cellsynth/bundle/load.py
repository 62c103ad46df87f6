"""Model bundles: one directory holding everything needed to generate from a trained model.

Layout::

    BUNDLE/
      config.json          format + version, architecture, schedule, prediction type, genes,
                           preprocessing record, label vocabularies and training label mix,
                           SHA-256 of every weight file
      model.safetensors    the trained weights
      ema.safetensors      their exponential moving average (used for sampling by default)
      var.json             optional: the genes' metadata (the training data's var columns and
                           statistics of the training cells), written into every output's var

Three kinds of bundle share this format (``config["kind"]``):

* ``"diffusion"`` (the default when absent): a denoiser over gene vectors, e.g. the DiT.
* ``"autoencoder"``: an encoder/decoder over log-normalised expression (model.safetensors only;
  no schedule, no EMA).
* ``"latent_diffusion"``: a denoiser over the autoencoder's latent codes (SCDG). Its autoencoder
  bundle lives inside it, in ``BUNDLE/autoencoder/``, pinned by the SHA-256 of its config.json;
  genes, preprocessing and var.json are the autoencoder's.

Weights are safetensors, never pickle. :func:`load_bundle` checks all of it before anything is
used, and every failure names the file and what is wrong with it.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth._version import __version__
from cellsynth.errors import BundleError
from cellsynth.files import atomic_directory, default_file_mode, sha256_file
from cellsynth.scheduler import PREDICTION_TYPES
from cellsynth.scheduler.schedules import NoiseSchedule
from cellsynth.torch_entry import build_module, require_torch

FORMAT_NAME = "cellsynth-bundle"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHT_FILES = {"model": "model.safetensors", "ema": "ema.safetensors"}
VAR_FILE = "var.json"
KINDS = ("diffusion", "autoencoder", "latent_diffusion")
AUTOENCODER_DIR = "autoencoder"  # where a latent-diffusion bundle keeps its autoencoder
_COMMON_KEYS = ("format", "format_version", "architecture", "genes", "preprocessing", "labels")
REQUIRED_KEYS = {
    "diffusion": _COMMON_KEYS + ("schedule", "prediction_type", "weights"),
    "autoencoder": _COMMON_KEYS + ("weights",),
    "latent_diffusion": _COMMON_KEYS + ("schedule", "prediction_type", "weights", "autoencoder"),
}
# Which weight files each kind holds (an autoencoder is not trained with an EMA).
KIND_WEIGHTS = {
    "diffusion": ("model", "ema"),
    "autoencoder": ("model",),
    "latent_diffusion": ("model", "ema"),
}

# Bundles shipped inside the package, addressable by name wherever a bundle path is accepted.
SHIPPED_DIR = Path(__file__).parents[1] / "models"  # python/cellsynth/models


@dataclass(frozen=True)
class LabelSpec:
    """The categorical labels a model is conditioned on.

    Attributes
    ----------
    keys : list of str
        obs column names, in the column order of the model's ``labels`` input [B, K].
    vocabularies : dict of str to list of str
        Category names per key; a label's code is its index here.
    combinations : list of (codes, count)
        Joint label combinations seen in training and how often, used to fill in labels a user
        leaves unspecified.
    """

    keys: list[str]
    vocabularies: dict[str, list[str]]
    combinations: list[tuple[tuple[int, ...], int]] = field(default_factory=list)

    @property
    def sizes(self) -> list[int]:
        """Number of categories per key, in key order."""
        return [len(self.vocabularies[k]) for k in self.keys]

    def to_dict(self) -> dict[str, Any]:
        return {
            "keys": list(self.keys),
            "vocabularies": {k: list(self.vocabularies[k]) for k in self.keys},
            "combinations": [{"codes": list(c), "count": int(n)} for c, n in self.combinations],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LabelSpec:
        keys = list(d["keys"])
        vocab = {k: list(v) for k, v in d["vocabularies"].items()}
        missing = [k for k in keys if k not in vocab]
        if missing:
            raise ValueError(f"labels.vocabularies has no entry for {missing}")
        combos = [(tuple(int(c) for c in e["codes"]), int(e["count"])) for e in d["combinations"]]
        for codes, _ in combos:
            if len(codes) != len(keys) or any(
                not 0 <= c < len(vocab[k]) for c, k in zip(codes, keys, strict=True)
            ):
                raise ValueError(
                    f"labels.combinations holds codes {list(codes)} outside the vocabularies"
                )
        return cls(keys, vocab, combos)

    @classmethod
    def from_codes(
        cls, keys: Sequence[str], vocabularies: Mapping[str, Sequence[str]], codes: np.ndarray
    ) -> LabelSpec:
        """Build the spec from training label codes int [N, K]."""
        codes = np.asarray(codes, dtype=np.int64).reshape(len(codes), len(keys))
        uniq, counts = np.unique(codes, axis=0, return_counts=True)
        combos = [(tuple(int(c) for c in row), int(n)) for row, n in zip(uniq, counts, strict=True)]
        return cls(list(keys), {k: list(vocabularies[k]) for k in keys}, combos)


@dataclass
class Bundle:
    """A validated model bundle (see :func:`load_bundle`).

    Load it once per run and pass the object on: what it reads from disk after loading (its
    autoencoder, its exports manifest, its gene table) is kept on it.
    """

    path: Path
    config: dict[str, Any]
    # (exports.json's stat stamp, its parsed manifest): re-read only when the file changes
    _exports: tuple[Any, dict[str, Any]] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def kind(self) -> str:
        """'diffusion', 'autoencoder' or 'latent_diffusion' (see the module docstring)."""
        return str(self.config.get("kind", "diffusion"))

    @property
    def genes(self) -> list[str]:
        return list(self.config["genes"])

    @functools.cached_property
    def _var_table(self) -> Any:
        """The genes' metadata as a pandas DataFrame indexed by gene (an output's ``var``).

        A latent-diffusion bundle's genes are its autoencoder's, and so is this table. A bundle
        written before gene metadata was kept gives the genes with no columns.
        """
        from cellsynth.data.gene_metadata import empty_var, read_var

        if self.kind == "latent_diffusion":
            return self.autoencoder._var_table
        root = self.path
        if not (root / VAR_FILE).is_file():
            return empty_var(self.genes)
        return read_var(root / VAR_FILE, self.genes)

    @property
    def var(self) -> Any:
        """The genes' metadata as a pandas DataFrame indexed by gene (an output's ``var``).

        A latent-diffusion bundle's genes are its autoencoder's, and so is this table. A bundle
        written before gene metadata was kept gives the genes with no columns. Read once; each
        call returns a copy the caller may change.
        """
        return self._var_table.copy()

    @property
    def width(self) -> int:
        """Width of the vectors the model maps: genes, or latent dimensions for latent diffusion."""
        return int(self.config["architecture"]["n_genes"])

    @functools.cached_property
    def autoencoder(self) -> Bundle:
        """The autoencoder of a latent-diffusion bundle (or the bundle itself if it is one)."""
        if self.kind == "autoencoder":
            return self
        if self.kind != "latent_diffusion":
            raise BundleError(
                f"{self.path} is a {self.kind} bundle and has no autoencoder; distillation and "
                "latent generation need an SCDG bundle (cellsynth train scdg) or an autoencoder"
            )
        return load_bundle(self.path / AUTOENCODER_DIR, verify_weights=False)

    @property
    def labels(self) -> LabelSpec:
        return LabelSpec.from_dict(self.config["labels"])

    @property
    def schedule(self) -> NoiseSchedule:
        return NoiseSchedule.from_dict(self.config["schedule"])

    @property
    def prediction_type(self) -> str:
        return self.config["prediction_type"]

    @property
    def architecture(self) -> dict[str, Any]:
        return dict(self.config["architecture"])

    @property
    def preprocessing(self) -> Any:
        """The :class:`cellsynth.data.PreprocessingRecord` the model was trained with."""
        from cellsynth.data import PreprocessingRecord

        return PreprocessingRecord.from_dict(self.config["preprocessing"])

    @property
    def zero_value(self) -> float:
        """The value silent genes had in model space (the zero-negation value)."""
        return float(self.config["preprocessing"]["zero_value"])

    def exports(self) -> dict[str, Any]:
        """The exports manifest (exports.json; an empty one before the first export), as a copy.

        Parsed once and kept; re-read only when the file changed on disk (an export made in
        this process). Raises BundleError as :func:`cellsynth.bundle.exports.parse_exports`.
        """
        from cellsynth.bundle.exports import EXPORTS_FILE, parse_exports

        try:
            st = (self.path / EXPORTS_FILE).stat()
            stamp: Any = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if self._exports is None or self._exports[0] != stamp:
            self._exports = (stamp, parse_exports(self.path, self.hash))
        return copy.deepcopy(self._exports[1])

    @property
    def hash(self) -> str:
        """SHA-256 of config.json, which itself pins the SHA-256 of every weight file."""
        return hashlib.sha256((self.path / CONFIG_FILE).read_bytes()).hexdigest()

    def weights_path(self, which: str = "ema") -> Path:
        if which not in WEIGHT_FILES:
            raise ValueError(f"weights must be one of {sorted(WEIGHT_FILES)}, got {which!r}")
        if which not in KIND_WEIGHTS[self.kind]:
            which = "model"  # an autoencoder has only its trained weights
        return self.path / WEIGHT_FILES[which]

    def to_torch(self, weights: str = "ema", device: str = "cpu") -> Any:
        """The denoiser as an eval-mode ``torch.nn.Module`` with the bundle's weights.

        Its forward takes ``(x: float32 [B, G], t: [B], labels: int64 [B, K])`` and returns the
        model output ``[B, G]`` (of the bundle's ``prediction_type``).
        """
        torch = require_torch()
        from safetensors.torch import load_file

        module = build_module(self.architecture, device="cpu")
        state = load_file(str(self.weights_path(weights)))
        _check_state_matches(module, state, self.weights_path(weights))
        module.load_state_dict(state, strict=True)
        return module.to(torch.device(device)).eval()


def _check_state_matches(module: Any, shapes: Mapping[str, Any], where: Path) -> None:
    """Raise BundleError unless ``shapes`` (name -> tensor or shape) fits ``module`` exactly."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    found = {k: tuple(getattr(v, "shape", v)) for k, v in shapes.items()}
    problems = []
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing:
        problems.append(f"missing tensors {missing[:5]}" + (" ..." if len(missing) > 5 else ""))
    if unexpected:
        problems.append(
            f"unexpected tensors {unexpected[:5]}" + (" ..." if len(unexpected) > 5 else "")
        )
    wrong = [
        f"{k} {found[k]} != {expected[k]}"
        for k in expected.keys() & found.keys()
        if found[k] != expected[k]
    ]
    if wrong:
        problems.append("shape mismatch: " + "; ".join(sorted(wrong)[:5]))
    if problems:
        raise BundleError(f"weights in {where} do not match config.json: " + ", ".join(problems))


def save_bundle(
    out: str | os.PathLike,
    *,
    architecture: Mapping[str, Any],
    schedule: NoiseSchedule | None,
    prediction_type: str | None,
    preprocessing: Any,
    labels: LabelSpec,
    model_state: Mapping[str, Any],
    ema_state: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    kind: str = "diffusion",
    autoencoder: str | os.PathLike | None = None,
    extra: Mapping[str, Any] | None = None,
    files: Mapping[str, Any] | None = None,
    var: Any = None,
) -> Path:
    """Write a bundle directory atomically and return its path.

    Parameters
    ----------
    out : path
        Target directory; written under a temporary name and renamed when complete.
    architecture : dict
        Constructor options of the model plus ``"name"`` (e.g. ``DiT.config``).
    preprocessing : PreprocessingRecord
        Its ``genes`` become the bundle's gene order.
    model_state, ema_state : dict of str to torch.Tensor
        State dicts; ``ema_state`` defaults to ``model_state``.
    training : dict, optional
        Free-form provenance (data set, epochs, loss history, seed).
    kind : {'diffusion', 'autoencoder', 'latent_diffusion'}
        What the bundle holds; an autoencoder has no schedule, prediction type or EMA.
    autoencoder : path, optional
        For 'latent_diffusion': the autoencoder bundle, copied into ``OUT/autoencoder``.
    extra : dict, optional
        Further config entries of the kind (e.g. an autoencoder's ``decode`` settings).
    files : dict of str to callable, optional
        Further files for people (e.g. ``training.json``, ``training.png``): name -> a function
        that writes that file at the path it is given; written inside the temporary directory,
        so they appear with the bundle or not at all. They are not part of the bundle's hash.
    var : pandas.DataFrame, optional
        The genes' metadata (:attr:`cellsynth.data.PreparedData.var`), indexed by the bundle's
        genes in their order; written as ``var.json``. A latent-diffusion bundle takes its
        autoencoder's and must not be given one.
    """
    import shutil

    from safetensors.torch import save_file

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind != "autoencoder" and prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}"
        )
    if (kind == "latent_diffusion") != (autoencoder is not None):
        raise ValueError("a latent_diffusion bundle, and only it, needs its autoencoder bundle")
    if var is not None and kind == "latent_diffusion":
        raise ValueError("a latent_diffusion bundle's gene metadata is its autoencoder's")
    if var is not None and [str(g) for g in var.index] != list(preprocessing.genes):
        raise ValueError("var must be indexed by the preprocessing record's genes, in order")
    record = preprocessing.to_dict()
    config: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "cellsynth_version": __version__,
        "kind": kind,
        "architecture": dict(architecture),
        "genes": list(record["genes"]),
        "preprocessing": record,
        "labels": labels.to_dict(),
        "training": dict(training or {}),
        "weights": {},
        **dict(extra or {}),
    }
    if kind != "autoencoder":
        config["schedule"] = schedule.to_dict()
        config["prediction_type"] = prediction_type
    states = {"model": model_state, "ema": ema_state if ema_state is not None else model_state}
    states = {k: v for k, v in states.items() if k in KIND_WEIGHTS[kind]}
    with atomic_directory(out, overwrite=overwrite) as tmp:
        if autoencoder is not None:
            ae = load_bundle(autoencoder)
            if ae.kind != "autoencoder":
                raise BundleError(f"{ae.path} is a {ae.kind} bundle, not an autoencoder")
            shutil.copytree(ae.path, tmp / AUTOENCODER_DIR, ignore=shutil.ignore_patterns("*.tmp*"))
            config["autoencoder"] = {"path": AUTOENCODER_DIR, "config_sha256": ae.hash}
        for which, state in states.items():
            tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
            # The gene list is written into the weights too: a config.json edited consistently
            # (genes, record, architecture) must not pass, and a patched model's tensors alone
            # do not show its number of genes.
            metadata = {"format": "pt", **_genes_stamp(config["genes"])}
            save_file(tensors, str(tmp / WEIGHT_FILES[which]), metadata=metadata)
            # safetensors writes 0600; a bundle's files share config.json's mode (the umask's).
            os.chmod(tmp / WEIGHT_FILES[which], default_file_mode())
            config["weights"][WEIGHT_FILES[which]] = sha256_file(tmp / WEIGHT_FILES[which])
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n")
        if var is not None:
            from cellsynth.data.gene_metadata import write_var

            write_var(var, tmp / VAR_FILE)
        for name, write in (files or {}).items():
            write(tmp / name)
        # Validate what was written before it takes the final name.
        _validate(Bundle(tmp, config), check_against_torch=False, verify_weights=False)
    return Path(out)


def load_bundle(path: str | os.PathLike | Bundle, verify_weights: bool = True) -> Bundle:
    """Open and validate a bundle directory.

    Checks: the directory and config.json exist and parse; format name and version are ones this
    cellsynth reads; every required entry is present and consistent (gene count, label sizes,
    schedule, prediction type, preprocessing record); every weight file exists, has the SHA-256
    that config.json records and parses as safetensors; and, where PyTorch is installed, that the
    tensors fit the architecture exactly.

    Raises
    ------
    BundleError
        Naming the file and the problem.
    """
    if isinstance(path, Bundle):
        return path
    root = resolve_bundle_path(path)
    cfg_path = root / CONFIG_FILE
    if not cfg_path.is_file():
        raise BundleError(f"{root} is not a cellsynth bundle: {CONFIG_FILE} is missing")
    try:
        config = json.loads(cfg_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{cfg_path} is corrupt: not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise BundleError(f"{cfg_path} is corrupt: expected a JSON object")
    bundle = Bundle(root, config)
    _validate(bundle, check_against_torch=True, verify_weights=verify_weights)
    return bundle


def shipped_bundles() -> list[str]:
    """Names of the bundles shipped with cellsynth (e.g. 'kang-dit')."""
    if not SHIPPED_DIR.is_dir():
        return []
    return sorted(p.name for p in SHIPPED_DIR.iterdir() if (p / CONFIG_FILE).is_file())


def resolve_bundle_path(path: str | os.PathLike) -> Path:
    """A bundle directory from a path or a shipped bundle's name (a real path wins)."""
    root = Path(path)
    if root.is_dir():
        return root
    if str(path) in shipped_bundles():
        return SHIPPED_DIR / str(path)
    shipped = ", ".join(shipped_bundles()) or "none"
    raise BundleError(
        f"no model bundle at {root}: not a directory nor a shipped bundle name (shipped: {shipped})"
    )


def _validate(bundle: Bundle, check_against_torch: bool, verify_weights: bool = True) -> None:
    cfg, root = bundle.config, bundle.path
    where = root / CONFIG_FILE
    if cfg.get("format") != FORMAT_NAME:
        raise BundleError(f"{where}: 'format' is {cfg.get('format')!r}, not {FORMAT_NAME!r}")
    version = cfg.get("format_version")
    if version != FORMAT_VERSION:
        hint = (
            "upgrade cellsynth"
            if isinstance(version, int) and version > FORMAT_VERSION
            else ("re-create the bundle with this cellsynth")
        )
        raise BundleError(
            f"{where}: bundle format version {version!r} (written by cellsynth "
            f"{cfg.get('cellsynth_version', 'unknown')}) cannot be read by cellsynth "
            f"{__version__}, which reads version {FORMAT_VERSION}; {hint}"
        )
    kind = cfg.get("kind", "diffusion")
    if kind not in KINDS:
        raise BundleError(f"{where}: unknown bundle kind {kind!r}; this cellsynth knows {KINDS}")
    missing = [k for k in REQUIRED_KEYS[kind] if k not in cfg]
    if missing:
        raise BundleError(f"{where} lacks required entries: {missing}")
    try:
        schedule = NoiseSchedule.from_dict(cfg["schedule"]) if kind != "autoencoder" else None
        labels = LabelSpec.from_dict(cfg["labels"])
        record = bundle.preprocessing
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{where}: invalid entry: {exc}") from exc
    if kind != "autoencoder" and cfg["prediction_type"] not in PREDICTION_TYPES:
        raise BundleError(
            f"{where}: prediction_type {cfg['prediction_type']!r} is not one of {PREDICTION_TYPES}"
        )
    arch = cfg["architecture"]
    genes = cfg["genes"]
    if len(set(genes)) != len(genes):
        raise BundleError(f"{where}: gene names are not unique")
    if list(record.genes) != list(genes):
        raise BundleError(f"{where}: 'genes' differs from the preprocessing record's genes")
    if kind == "latent_diffusion":
        _validate_autoencoder_link(bundle)
    elif arch.get("n_genes") != len(genes):
        raise BundleError(
            f"{where}: architecture expects {arch.get('n_genes')} genes but {len(genes)} are listed"
        )
    if list(arch.get("label_sizes", [])) != labels.sizes:
        raise BundleError(
            f"{where}: architecture label_sizes {arch.get('label_sizes')} do not match the label "
            f"vocabularies {dict(zip(labels.keys, labels.sizes, strict=True))}"
        )
    if schedule is not None and schedule.num_train_timesteps < 1:
        raise BundleError(f"{where}: empty schedule")
    _validate_weights(bundle, check_against_torch, verify_weights)
    if kind != "latent_diffusion" and (root / VAR_FILE).is_file():
        bundle.var  # noqa: B018 - read to check it: same genes, in order, well-formed columns


def _validate_autoencoder_link(bundle: Bundle) -> None:
    """A latent-diffusion bundle's autoencoder: present, the pinned one, same genes, same width."""
    where = bundle.path / CONFIG_FILE
    link = bundle.config["autoencoder"]
    sub = bundle.path / str(link.get("path", AUTOENCODER_DIR))
    if not (sub / CONFIG_FILE).is_file():
        raise BundleError(f"{bundle.path} is incomplete: its autoencoder ({sub.name}/) is missing")
    ae = Bundle(sub, {})
    if ae.hash != link.get("config_sha256"):
        raise BundleError(
            f"{sub / CONFIG_FILE} is not the autoencoder this bundle was trained with "
            "(its SHA-256 differs from the one in config.json)"
        )
    ae = load_bundle(sub)
    if ae.kind != "autoencoder":
        raise BundleError(f"{sub} is a {ae.kind} bundle, not an autoencoder")
    bundle.__dict__["autoencoder"] = ae  # the cached_property's slot: validated once, kept
    if ae.genes != bundle.genes:
        raise BundleError(f"{where}: 'genes' differs from its autoencoder's genes")
    latent = ae.architecture.get("latent_dim")
    if bundle.config["architecture"].get("n_genes") != latent:
        raise BundleError(
            f"{where}: the denoiser maps {bundle.config['architecture'].get('n_genes')}-d codes "
            f"but the autoencoder's latent space has {latent} dimensions"
        )


def _genes_stamp(genes: list[str]) -> dict[str, str]:
    digest = hashlib.sha256("\n".join(genes).encode()).hexdigest()
    return {"genes_count": str(len(genes)), "genes_sha256": digest}


def _validate_weights(bundle: Bundle, check_against_torch: bool, verify_weights: bool) -> None:
    from safetensors import safe_open

    recorded = bundle.config["weights"]
    headers = []
    for filename in (WEIGHT_FILES[w] for w in KIND_WEIGHTS[bundle.kind]):
        path = bundle.path / filename
        if not path.is_file():
            raise BundleError(f"{bundle.path} is incomplete: {filename} is missing")
        if filename not in recorded:
            raise BundleError(f"{bundle.path / CONFIG_FILE} records no checksum for {filename}")
        if verify_weights and sha256_file(path) != recorded[filename]:
            raise BundleError(f"{path} is corrupt: its SHA-256 differs from the one in config.json")
        try:
            with safe_open(str(path), framework="numpy") as f:
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
                stamp = {k: v for k, v in (f.metadata() or {}).items() if k.startswith("genes")}
        except Exception as exc:  # safetensors raises its own error types for bad headers
            raise BundleError(f"{path} is corrupt: cannot be read as safetensors ({exc})") from exc
        # Weights written before the stamp existed carry none; there is nothing to compare.
        if stamp and stamp != _genes_stamp(bundle.genes):
            raise BundleError(
                f"{path} was trained on {stamp.get('genes_count')} genes (gene list SHA-256 "
                f"{stamp.get('genes_sha256', '')[:12]}), not the {len(bundle.genes)} genes listed "
                f"in {bundle.path / CONFIG_FILE}: the gene list was edited"
            )
        headers.append((path, shapes))
    if check_against_torch:
        try:
            import torch  # noqa: F401
        except ImportError:
            return  # the torch-free runtime checks checksums and headers only
        module = build_module(bundle.architecture, device="meta")
        for path, shapes in headers:
            _check_state_matches(module, shapes, path)
