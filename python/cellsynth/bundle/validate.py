"""Validation of a bundle directory: every check :func:`~cellsynth.bundle.load.load_bundle` makes.

The config entries each kind needs, their consistency (gene count, label sizes, schedule,
prediction type, preprocessing record), the autoencoder a latent bundle pins, and the weight
files (checksums, the gene stamp, and with PyTorch, the tensors against the architecture).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cellsynth.bundle.format import (
    AUTOENCODER_DIR,
    CONFIG_FILE,
    FORMAT_NAME,
    FORMAT_VERSION,
    KIND_WEIGHTS,
    KINDS,
    REQUIRED_KEYS,
    VAR_FILE,
    WEIGHT_FILES,
    LabelSpec,
    genes_stamp,
)

if TYPE_CHECKING:
    from cellsynth.bundle.load import Bundle
from cellsynth._version import __version__
from cellsynth.errors import BundleError
from cellsynth.files import sha256_file
from cellsynth.scheduler import PREDICTION_TYPES
from cellsynth.scheduler.schedules import NoiseSchedule
from cellsynth.torch_entry import build_module


def check_state_matches(module: Any, shapes: Mapping[str, Any], where: Path) -> None:
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


def validate(bundle: Bundle, check_against_torch: bool, verify_weights: bool = True) -> None:
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
    sizes = list(labels.sizes)
    if "depth" in cfg:  # a depth-conditioned model's last label column is the depth bin
        try:
            sizes.append(len(cfg["depth"]["edges_log"]) + 1)
        except (KeyError, TypeError) as exc:
            raise BundleError(f"{where}: invalid 'depth' entry: {exc}") from exc
    if list(arch.get("label_sizes", [])) != sizes:
        depth = " and the depth bins" if "depth" in cfg else ""
        raise BundleError(
            f"{where}: architecture label_sizes {arch.get('label_sizes')} do not match the label "
            f"vocabularies {dict(zip(labels.keys, labels.sizes, strict=True))}{depth}"
        )
    if schedule is not None and schedule.num_train_timesteps < 1:
        raise BundleError(f"{where}: empty schedule")
    _validate_weights(bundle, check_against_torch, verify_weights)
    if kind != "latent_diffusion" and (root / VAR_FILE).is_file():
        bundle.var  # noqa: B018 - read to check it: same genes, in order, well-formed columns


def _validate_autoencoder_link(bundle: Bundle) -> None:
    """A latent-diffusion bundle's autoencoder: present, the pinned one, same genes, same width."""
    from cellsynth.bundle.load import Bundle, load_bundle  # load imports this module

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
        if stamp and stamp != genes_stamp(bundle.genes):
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
            check_state_matches(module, shapes, path)
