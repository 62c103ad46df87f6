"""``cellsynth info``: describe a bundle (architecture, genes, labels, schedule, training)."""

from __future__ import annotations

import argparse
import json

from cellsynth.bundle import WEIGHT_FILES, Bundle, load_bundle


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe a model bundle")
    p.add_argument("bundle", help="bundle directory")
    p.add_argument("--json", action="store_true", help="print config.json as it is")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    bundle = load_bundle(args.bundle)
    if args.json:
        print(json.dumps(bundle.config, indent=1))
    else:
        print(describe(bundle))


def parameter_count(bundle: Bundle) -> int:
    """Number of weights, read from the safetensors header (no torch needed)."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(bundle.weights_path("model")), framework="numpy") as f:
        for key in f.keys():
            n = 1
            for d in f.get_slice(key).get_shape():
                n *= d
            total += n
    return total


def describe(bundle: Bundle) -> str:
    """A short, human-readable summary of a bundle."""
    cfg = bundle.config
    arch = {k: v for k, v in cfg["architecture"].items() if k != "name"}
    genes = bundle.genes
    spec = bundle.labels
    sched = cfg["schedule"]
    rec = cfg["preprocessing"]
    lines = [
        f"bundle       {bundle.path}",
        f"hash         {bundle.hash[:16]}",
        f"format       {cfg['format']} v{cfg['format_version']} "
        f"(cellsynth {cfg.get('cellsynth_version')})",
        f"model        {cfg['architecture'].get('name')} "
        + ", ".join(f"{k}={v}" for k, v in arch.items() if k not in ("n_genes", "label_sizes"))
        + f"; {parameter_count(bundle):,} parameters",
        f"prediction   {cfg['prediction_type']}",
        f"schedule     {sched['beta_schedule']} T={sched['num_train_timesteps']} "
        f"betas {sched['beta_start']}..{sched['beta_end']}",
        f"genes        {len(genes)} ({', '.join(genes[:5])}{', ...' if len(genes) > 5 else ''}), "
        f"zero-negation value {rec.get('zero_value')}",
    ]
    if spec.keys:
        for key, size in zip(spec.keys, spec.sizes, strict=True):
            vocab = spec.vocabularies[key]
            shown = ", ".join(vocab[:8]) + (", ..." if len(vocab) > 8 else "")
            lines.append(f"label        {key}: {size} values ({shown})")
    else:
        lines.append("labels       none (unconditional)")
    train = cfg.get("training") or {}
    if train:
        hist = train.get("history") or []
        last = f", final loss {hist[-1].get('loss'):.4f}" if hist and "loss" in hist[-1] else ""
        lines.append(
            f"training     data {train.get('data')}, {train.get('n_train_cells')} cells, "
            f"{train.get('epochs')} epochs ({train.get('steps')} steps){last}, "
            f"{train.get('seconds')} s on {train.get('device')}"
        )
    sizes = ", ".join(
        f"{f} {(bundle.path / f).stat().st_size / 1e6:.1f} MB" for f in WEIGHT_FILES.values()
    )
    lines.append(f"files        config.json, {sizes}")
    lines.extend(_describe_exports(bundle))
    return "\n".join(lines)


def _describe_exports(bundle: Bundle) -> list[str]:
    """One line per ONNX file and TensorRT engine listed in exports.json."""
    from cellsynth.errors import BundleError
    from cellsynth.exports import read_exports

    try:
        manifest = read_exports(bundle)
    except BundleError as exc:
        return [f"exports      unusable: {exc}"]
    lines = []
    for _, e in sorted(manifest["onnx"].items()):
        worst = max((c.get("max_rel_error", 0.0) for c in e.get("parity", {}).get("cases", [])),
                    default=None)  # fmt: skip
        parity = f", parity {worst:.1e}" if isinstance(worst, float) else ""
        lines.append(f"onnx         {e['file']} ({e.get('size_bytes', 0) / 1e6:.1f} MB{parity})")
    for key, e in sorted(manifest["tensorrt"].items()):
        lines.append(f"tensorrt     {e['file']} ({key})")
    return lines or ["exports      none (cellsynth export BUNDLE --format onnx)"]
