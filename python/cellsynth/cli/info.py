"""``cellsynth info``: describe a bundle (architecture, genes, labels, schedule, training)."""

from __future__ import annotations

import argparse
import json

from cellsynth.bundle.format import KIND_WEIGHTS, WEIGHT_FILES
from cellsynth.bundle.load import Bundle, load_bundle

#: architecture entries left out of the "model" line (sizes shown elsewhere, or long lists).
_NOT_SHOWN = ("n_genes", "label_sizes", "gene_order")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe a model bundle")
    p.add_argument("bundle", help="bundle directory or shipped name (kang-dit, kang-scdg)")
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
    """A short, human-readable summary of a bundle (of any kind)."""
    cfg = bundle.config
    arch = {k: v for k, v in cfg["architecture"].items() if k != "name"}
    genes = bundle.genes
    spec = bundle.labels
    rec = cfg["preprocessing"]
    lines = [
        f"bundle       {bundle.path}",
        f"kind         {bundle.kind}",
        f"hash         {bundle.hash[:16]}",
        f"format       {cfg['format']} v{cfg['format_version']} "
        f"(cellsynth {cfg.get('cellsynth_version')})",
        f"model        {cfg['architecture'].get('name')} "
        + ", ".join(f"{k}={v}" for k, v in arch.items() if k not in _NOT_SHOWN)
        + f"; {parameter_count(bundle):,} parameters",
    ]
    if "gene_order" in arch:  # a permutation of every gene: say what it is, not its 2,000 values
        lines.append("gene order   clustered by co-expression (each patch holds co-varying genes)")
    if "depth" in cfg:  # the model's last label column; drawn per cell, never named by the user
        bins = len(cfg["depth"]["edges_log"]) + 1
        lines.append(f"depth        conditioned on {bins} library-size bins (drawn per cell)")
    if "prediction_type" in cfg:
        lines.append(f"prediction   {cfg['prediction_type']}")
    if "schedule" in cfg:
        sched = cfg["schedule"]
        lines.append(
            f"schedule     {sched['beta_schedule']} T={sched['num_train_timesteps']} "
            f"betas {sched['beta_start']}..{sched['beta_end']}"
        )
    silent = (
        f"zero-negation value {rec.get('zero_value')}"
        if bundle.kind == "diffusion"
        else "log-normalised (not zero-negated)"
    )
    lines.append(
        f"genes        {len(genes)} ({', '.join(genes[:5])}{', ...' if len(genes) > 5 else ''}), "
        f"{silent}"
    )
    columns = list(bundle.var.columns)
    lines.append(
        "gene table   " + (", ".join(columns) if columns else "none (trained before it was kept)")
    )
    if bundle.kind == "latent_diffusion":
        ae = bundle.autoencoder
        lines.append(
            f"latent       {bundle.width} dimensions, codes scaled by "
            f"{float(cfg['latent']['scale']):.4g}"
        )
        lines.append(
            f"autoencoder  {ae.path.name}/ (hash {ae.hash[:16]}, "
            f"{parameter_count(ae):,} parameters, {_decoder(ae.config)})"
        )
    elif bundle.kind == "autoencoder":
        lines.append(f"decode       {_decoder(cfg)}")
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
            + (f"{train['epochs']} epochs " if train.get("epochs") is not None else "")
            + (f"({train['steps']} steps)" if train.get("steps") is not None else "")
            + f"{last}, "
            f"{train.get('seconds')} s on {train.get('device')}"
        )
    lines.extend(_describe_validation(train))
    files = [WEIGHT_FILES[w] for w in KIND_WEIGHTS[bundle.kind]]
    sizes = ", ".join(f"{f} {(bundle.path / f).stat().st_size / 1e6:.1f} MB" for f in files)
    lines.append(f"files        config.json, {sizes}")
    lines.extend(_describe_exports(bundle))
    if bundle.kind == "latent_diffusion":
        ae = bundle.autoencoder
        lines.extend(_describe_exports(ae, prefix=f"{ae.path.name}/", none_line=False))
    return "\n".join(lines)


def _decoder(cfg: dict) -> str:
    """How an autoencoder turns codes into cells."""
    decode = cfg.get("decode", {})
    likelihood = decode.get("likelihood", cfg["architecture"].get("likelihood", "mse"))
    if likelihood in ("nb", "zinb"):
        name = "negative binomial" if likelihood == "nb" else "zero-inflated negative binomial"
        return f"{name} decoder over counts"
    return f"decoder values below {float(decode.get('zero_threshold', 0.0)):.4g} become 0"


def _describe_validation(train: dict) -> list[str]:
    """The best validation (the weights the bundle keeps) and any warning."""
    from cellsynth.cli.train import validation_summary

    best = train.get("best")
    lines = (
        [f"validation   step {best.get('step')} (kept): {validation_summary(best)}"] if best else []
    )
    if train.get("verdict"):
        lines.append(f"warning      {train['verdict']}")
    return lines


def _describe_exports(bundle: Bundle, prefix: str = "", none_line: bool = True) -> list[str]:
    """One line per ONNX file and TensorRT engine listed in exports.json (file names prefixed
    by ``prefix``; a line saying there are none unless ``none_line`` is False)."""
    from cellsynth.bundle.exports import export_path, read_exports
    from cellsynth.errors import BundleError

    try:
        manifest = read_exports(bundle)
    except BundleError as exc:
        return [f"exports      {prefix}unusable: {exc}"]
    lines = []
    for key, e in sorted(manifest["onnx"].items()):
        try:  # what is reported as usable is checked: present, inside the bundle, unchanged
            export_path(bundle, "onnx", key)
        except BundleError as exc:
            lines.append(f"onnx         {prefix}{e.get('file', key)} unusable: {exc}")
            continue
        worst = max((c.get("max_rel_error", 0.0) for c in e.get("parity", {}).get("cases", [])),
                    default=None)  # fmt: skip
        parity = f", parity {worst:.1e}" if isinstance(worst, float) else ""
        size = e.get("size_bytes", 0) / 1e6
        lines.append(f"onnx         {prefix}{e['file']} ({size:.1f} MB{parity})")
        if e.get("onnxruntime_graph"):
            from cellsynth.cli.export import fusion_summary

            lines.append(
                f"             {prefix}onnxruntime: {fusion_summary(e['onnxruntime_graph'])}"
            )
    for key, e in sorted(manifest["tensorrt"].items()):
        try:
            export_path(bundle, "tensorrt", key)
        except BundleError as exc:
            lines.append(f"tensorrt     {prefix}{e.get('file', key)} unusable: {exc}")
            continue
        lines.append(f"tensorrt     {prefix}{e['file']} ({key})")
    if not lines and none_line:
        lines = ["exports      none (cellsynth export BUNDLE --format onnx)"]
    return lines
