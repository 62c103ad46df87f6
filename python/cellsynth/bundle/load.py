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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cellsynth.bundle.format import (
    AUTOENCODER_DIR,
    CONFIG_FILE,
    KIND_WEIGHTS,
    SHIPPED_DIR,
    VAR_FILE,
    WEIGHT_FILES,
    LabelSpec,
)
from cellsynth.bundle.validate import check_state_matches, validate
from cellsynth.errors import BundleError
from cellsynth.scheduler.schedules import NoiseSchedule
from cellsynth.torch_entry import build_module, require_torch


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
    def model_label_sizes(self) -> list[int]:
        """Classes per column of the model's label input: the labels' (``labels.sizes``), then
        the depth bins of a depth-conditioned model (:mod:`cellsynth.generation.depth`)."""
        sizes = list(self.labels.sizes)
        if "depth" in self.config:
            sizes.append(len(self.config["depth"]["edges_log"]) + 1)
        return sizes

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
        check_state_matches(module, state, self.weights_path(weights))
        module.load_state_dict(state, strict=True)
        return module.to(torch.device(device)).eval()


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
    validate(bundle, check_against_torch=True, verify_weights=verify_weights)
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
