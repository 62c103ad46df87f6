"""What the three schedulers share: option checks, the config, array plumbing and the keyed noise.

The math of each scheduler lives in its own module (ddim.py, ddpm.py, dpmsolver.py) and in the
compiled core (csrc/step.h); this module only moves arrays:

* NumPy float32 C-contiguous arrays go to ``_core.step`` zero-copy;
* CPU torch tensors go the same way through ``tensor.numpy()`` (shared memory), and the result is a
  tensor;
* CUDA torch tensors go to ``_core.cuda_step`` as device pointers, launched on
  ``torch.cuda.current_stream()``; without a CUDA build they round-trip through the CPU;
* torch-free device arrays (``_core.DeviceArray``, or any object with ``is_cuda = True``,
  ``data_ptr()``, ``shape``, ``dtype`` 'float32' and ``device`` (an int)) go to
  ``_core.cuda_step`` too, launched on the ``stream`` given to :func:`run_step`, else on the
  sample's ``stream`` attribute (a ``cudaStream_t`` as int; 0, the legacy default stream, when it
  has none). This is how the TensorRT and onnxruntime-CUDA backends step without torch.

torch is never imported here unless the caller passes tensors (the runtime must work without it).
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from cellsynth import _core
from cellsynth.scheduler.schedules import BETA_SCHEDULES, NoiseSchedule

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace", "quadratic")
INITIAL_NOISE_STEP = int(_core.INITIAL_NOISE_STEP)


class SchedulerConfig(dict):
    """A read-only dict of a scheduler's constructor options, also readable as attributes
    (``sched.config.num_train_timesteps``), like diffusers' ``FrozenDict``."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def _readonly(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("a scheduler's config is read-only; build a new scheduler instead")

    __setitem__ = __delitem__ = __setattr__ = _readonly  # type: ignore[assignment]
    update = pop = popitem = clear = setdefault = _readonly  # type: ignore[assignment]


# ------------------------------------------------------------------------------------- checks


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ValueError(f"{name} must lie in [{lo}, {hi}], got {value}")
    return value


def check_float(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    bad = not math.isfinite(value)
    if low is not None:
        bad = bad or (value <= low if low_open else value < low)
    if high is not None:
        bad = bad or value > high
    if bad:
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must be a finite number in {bracket}{lo}, {hi}], got {value}")
    return value


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {choices}")
    return str(value)


def as_timestep(timestep: Any) -> int:
    """An int from an int, a NumPy integer or a one-element integer tensor / array."""
    try:
        value = timestep.item() if hasattr(timestep, "item") else timestep
    except (ValueError, RuntimeError):
        raise ValueError(f"timestep must be a single integer, got {timestep!r}") from None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"timestep must be an integer, got {timestep!r}")
    return int(value)


# ------------------------------------------------------------------------------------- arrays


def _torch_module():
    return sys.modules.get("torch")


def _is_tensor(x: Any) -> bool:
    torch = _torch_module()
    return torch is not None and isinstance(x, torch.Tensor)


def _is_device_array(x: Any) -> bool:
    """A torch-free CUDA array: not a tensor, ``is_cuda`` is True and it has ``data_ptr()``."""
    return (
        not _is_tensor(x)
        and getattr(x, "is_cuda", False) is True
        and callable(getattr(x, "data_ptr", None))
    )


def _array_kind(x: Any) -> str:
    if _is_tensor(x):
        return "tensor"
    return "device" if _is_device_array(x) else "host"


def _stream_handle(stream: Any) -> int:
    """A cudaStream_t as int from an int, a ``_core.CudaStream`` or a ``torch.cuda.Stream``."""
    if stream is None:
        return 0
    for attr in ("handle", "cuda_stream"):
        if hasattr(stream, attr):
            return int(getattr(stream, attr))
    return int(stream)


def _span(t) -> tuple[int, int]:
    """[first byte, one past the last byte) of a contiguous tensor's storage use."""
    start = t.data_ptr()
    return start, start + t.numel() * t.element_size()


def _overlap(a, b) -> bool:
    (a0, a1), (b0, b1) = _span(a), _span(b)
    return a0 != a1 and b0 != b1 and a0 < b1 and b0 < a1


def _check_cuda_tensors(tensors: dict[str, Any]) -> None:
    torch = _torch_module()
    sample = tensors["sample"]
    if sample.ndim != 2:
        raise ValueError(f"sample must be 2-D [n_cells, n_genes], got shape {tuple(sample.shape)}")
    for name, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor like sample, got {type(t).__name__}")
        if t.device != sample.device:
            raise ValueError(f"{name} is on {t.device} but sample is on {sample.device}")
        if t.dtype != torch.float32:
            raise ValueError(f"{name} must have dtype float32, got {t.dtype}")
        if t.shape != sample.shape:
            raise ValueError(
                f"{name} has shape {tuple(t.shape)}, expected {tuple(sample.shape)} like sample"
            )
        if not t.is_contiguous():
            raise ValueError(f"{name} must be C-contiguous (use .contiguous())")
    out, hist = tensors["out"], tensors.get("history")
    if _span(out) != _span(sample) and _overlap(out, sample):
        raise ValueError("out and sample overlap in memory (aliased arrays); pass separate arrays")
    for name in ("model_output", "history", "variance_noise"):
        if tensors.get(name) is not None and _overlap(out, tensors[name]):
            raise ValueError(f"out and {name} overlap in memory (aliased arrays)")
    if hist is not None:
        for name in ("model_output", "sample", "variance_noise"):
            if tensors.get(name) is not None and _overlap(hist, tensors[name]):
                raise ValueError(f"history and {name} overlap in memory (aliased arrays)")


def _device_span(a: Any) -> tuple[int, int]:
    start = int(a.data_ptr())
    return start, start + int(np.prod(tuple(a.shape), dtype=np.int64)) * 4


def _device_overlap(a: Any, b: Any) -> bool:
    (a0, a1), (b0, b1) = _device_span(a), _device_span(b)
    return a0 != a1 and b0 != b1 and a0 < b1 and b0 < a1


def _check_device_arrays(arrays: dict[str, Any]) -> None:
    sample = arrays["sample"]
    shape = tuple(sample.shape)
    if len(shape) != 2:
        raise ValueError(f"sample must be 2-D [n_cells, n_genes], got shape {shape}")
    for name, a in arrays.items():
        if a is None:
            continue
        if not _is_device_array(a):
            raise TypeError(
                f"{name} must be a CUDA device array like sample, got {type(a).__name__}"
            )
        if int(a.device) != int(sample.device):
            raise ValueError(f"{name} is on cuda:{a.device} but sample is on cuda:{sample.device}")
        if str(a.dtype) != "float32":
            raise ValueError(f"{name} must have dtype float32, got {a.dtype}")
        if tuple(a.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(a.shape)}, expected {shape} like sample")
    out, hist = arrays["out"], arrays.get("history")
    if _device_span(out) != _device_span(sample) and _device_overlap(out, sample):
        raise ValueError("out and sample overlap in memory (aliased arrays); pass separate arrays")
    for name in ("model_output", "history", "variance_noise"):
        if arrays.get(name) is not None and _device_overlap(out, arrays[name]):
            raise ValueError(f"out and {name} overlap in memory (aliased arrays)")
    if hist is not None:
        for name in ("model_output", "sample", "variance_noise"):
            if arrays.get(name) is not None and _device_overlap(hist, arrays[name]):
                raise ValueError(f"history and {name} overlap in memory (aliased arrays)")


def _numpy_view(x: Any, name: str) -> np.ndarray:
    """A NumPy array sharing memory with a NumPy array or CPU tensor (validated by the core)."""
    if isinstance(x, np.ndarray):
        return x
    if _is_tensor(x):
        return x.detach().numpy()
    raise TypeError(f"{name} must be a numpy.ndarray or a torch.Tensor, got {type(x).__name__}")


_warned_cpu_fallback = False


def run_step(
    coefficients: Any,
    model_output: Any,
    sample: Any,
    *,
    out: Any = None,
    history: Any = None,
    variance_noise: Any = None,
    options: Mapping[str, Any],
    stream: Any = None,
) -> Any:
    """Run the fused step on NumPy arrays, CPU tensors, CUDA tensors or CUDA device arrays;
    returns ``out``.

    ``options`` are the keyword options of ``_core.step`` besides the arrays and coefficients.
    ``stream`` (device arrays only; an int handle or a ``_core.CudaStream``) overrides the
    sample's ``stream`` attribute; CUDA tensors always use torch's current stream.
    """
    if _is_tensor(sample) and sample.is_cuda:
        return _run_cuda(coefficients, model_output, sample, out, history, variance_noise, options)
    if _is_device_array(sample):
        return _run_device_array(
            coefficients, model_output, sample, out, history, variance_noise, options, stream
        )
    tensor_in = _is_tensor(sample)
    if tensor_in != _is_tensor(model_output):
        raise TypeError(
            "model_output and sample must both be NumPy arrays or both be torch tensors, got "
            f"{type(model_output).__name__} and {type(sample).__name__}"
        )
    x = _numpy_view(sample, "sample")
    m = _numpy_view(model_output, "model_output")
    if out is None:
        if tensor_in:
            torch = _torch_module()
            out = torch.empty(tuple(x.shape), dtype=torch.float32)
        else:
            out = np.empty(x.shape, dtype=np.float32)
    o = _numpy_view(out, "out")
    h = None if history is None else _numpy_view(history, "history")
    z = None if variance_noise is None else _numpy_view(variance_noise, "variance_noise")
    _core.step(m, x, o, coefficients, history=h, noise=z, **options)
    return out


def _run_cuda(coefficients, model_output, sample, out, history, variance_noise, options):
    torch = _torch_module()
    if out is None:
        out = torch.empty_like(sample, memory_format=torch.contiguous_format)
    tensors = {
        "model_output": model_output,
        "sample": sample,
        "out": out,
        "history": history,
        "variance_noise": variance_noise,
    }
    _check_cuda_tensors(tensors)
    if not _core.cuda_compiled:
        global _warned_cpu_fallback
        if not _warned_cpu_fallback:
            warnings.warn(
                "cellsynth was built without CUDA: the scheduler steps CUDA tensors on the CPU "
                "(copying them there and back)",
                RuntimeWarning,
                stacklevel=3,
            )
            _warned_cpu_fallback = True
        cpu = {k: (None if v is None else v.detach().cpu()) for k, v in tensors.items()}
        cpu_out = cpu["out"] if out.data_ptr() != sample.data_ptr() else cpu["sample"]
        run_step(
            coefficients,
            cpu["model_output"],
            cpu["sample"],
            out=cpu_out,
            history=cpu["history"],
            variance_noise=cpu["variance_noise"],
            options=options,
        )
        out.copy_(cpu_out)
        if history is not None:
            history.copy_(cpu["history"])
        return out
    n_cells, n_genes = sample.shape
    _core.cuda_step(
        model_output.data_ptr(),
        sample.data_ptr(),
        out.data_ptr(),
        int(n_cells),
        int(n_genes),
        coefficients,
        history=0 if history is None else history.data_ptr(),
        noise=0 if variance_noise is None else variance_noise.data_ptr(),
        stream=torch.cuda.current_stream(sample.device).cuda_stream,
        device=sample.device.index if sample.device.index is not None else 0,
        **options,
    )
    return out


def _run_device_array(
    coefficients, model_output, sample, out, history, variance_noise, options, stream
):
    if not _core.cuda_compiled:
        raise RuntimeError(
            "cellsynth was built without CUDA: it cannot step CUDA device arrays (reinstall with "
            "the CUDA toolkit present)"
        )
    handle = _stream_handle(stream if stream is not None else getattr(sample, "stream", 0))
    device = int(sample.device)
    if out is None:
        out = _core.DeviceArray(tuple(sample.shape), "float32", device, stream=handle)
    arrays = {
        "model_output": model_output,
        "sample": sample,
        "out": out,
        "history": history,
        "variance_noise": variance_noise,
    }
    _check_device_arrays(arrays)
    n_cells, n_genes = (int(d) for d in sample.shape)
    _core.cuda_step(
        int(model_output.data_ptr()),
        int(sample.data_ptr()),
        int(out.data_ptr()),
        n_cells,
        n_genes,
        coefficients,
        history=0 if history is None else int(history.data_ptr()),
        noise=0 if variance_noise is None else int(variance_noise.data_ptr()),
        stream=handle,
        device=device,
        **options,
    )
    return out


def zeros_like(x: Any) -> Any:
    """A zero float32 array / tensor (same device; same stream for device arrays) like ``x``."""
    if _is_tensor(x):
        torch = _torch_module()
        return torch.zeros(tuple(x.shape), dtype=torch.float32, device=x.device)
    if _is_device_array(x):
        handle = _stream_handle(getattr(x, "stream", 0))
        z = _core.DeviceArray(tuple(x.shape), "float32", int(x.device), stream=handle)
        z.zero_()
        return z
    return np.zeros(np.shape(x), dtype=np.float32)


def same_kind(a: Any, b: Any) -> bool:
    """Whether a buffer made for ``a`` can serve ``b`` (type, shape, device)."""
    kind = _array_kind(a)
    if kind != _array_kind(b):
        return False
    if tuple(a.shape) != tuple(b.shape):
        return False
    if kind == "host":
        return True
    return a.device == b.device


# ------------------------------------------------------------------------------------- base class


class SchedulerBase:
    """Shared machinery; see :class:`~cellsynth.scheduler.DDIMScheduler` for the options.

    Subclasses define ``_config_names`` (constructor options, in order) and
    ``_diffusers_only`` (diffusers options of the same scheduler that cellsynth does not
    implement, with the default value it accepts for them in :meth:`from_config`).
    """

    order = 1
    init_noise_sigma = 1.0
    _config_names: tuple[str, ...] = ()
    _diffusers_only: dict[str, Any] = {}

    # --- construction helpers -------------------------------------------------------------

    def _init_schedule(
        self,
        num_train_timesteps: int,
        beta_start: float,
        beta_end: float,
        beta_schedule: str,
        trained_betas: Any,
        rescale_betas_zero_snr: bool,
    ) -> None:
        if trained_betas is None:
            check_int("num_train_timesteps", num_train_timesteps, 1)
            check_choice("beta_schedule", beta_schedule, BETA_SCHEDULES)
            tb = None
        else:
            tb = tuple(float(b) for b in np.asarray(trained_betas, dtype=np.float64).ravel())
        for name, v in (("beta_start", beta_start), ("beta_end", beta_end)):
            check_float(name, v)
        self.schedule = NoiseSchedule(
            num_train_timesteps=int(num_train_timesteps) if tb is None else len(tb),
            beta_start=float(beta_start),
            beta_end=float(beta_end),
            beta_schedule=beta_schedule,
            trained_betas=tb,
            rescale_betas_zero_snr=check_bool("rescale_betas_zero_snr", rescale_betas_zero_snr),
        )
        self.betas = self.schedule.betas  # float64 [T]
        self.alphas = 1.0 - self.betas  # float64 [T]
        self.alphas_cumprod = self.schedule.alphas_cumprod  # float64 [T]
        self.num_train_timesteps = self.schedule.num_train_timesteps

    def _init_x0_options(
        self,
        prediction_type: str,
        clip_sample: bool,
        clip_sample_range: float,
        thresholding: bool,
        dynamic_thresholding_ratio: float,
        sample_max_value: float,
    ) -> None:
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        check_bool("clip_sample", clip_sample)
        check_float("clip_sample_range", clip_sample_range, 0.0, low_open=True)
        check_bool("thresholding", thresholding)
        check_float("dynamic_thresholding_ratio", dynamic_thresholding_ratio, 0.0, 1.0)
        check_float("sample_max_value", sample_max_value, 0.0, low_open=True)

    def _init_extras(self, truncate_final: bool, truncate_threshold: float, seed: int) -> None:
        check_bool("truncate_final", truncate_final)
        check_float("truncate_threshold", truncate_threshold)
        check_int("seed", seed, 0, 2**64 - 1)

    def _store_config(self, values: Mapping[str, Any]) -> None:
        cfg = {}
        for name in self._config_names:
            v = values[name]
            if isinstance(v, np.ndarray):
                v = v.tolist()
            elif isinstance(v, tuple):
                v = list(v)
            cfg[name] = v
        self._config = SchedulerConfig(cfg)

    # --- diffusers-style config -----------------------------------------------------------

    @property
    def config(self) -> SchedulerConfig:
        """The constructor options (read-only; attribute access works too)."""
        return self._config

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None = None, **kwargs: Any):
        """Build a scheduler from a config dict (ours or a diffusers scheduler's ``config``).

        Keys starting with '_' are metadata and ignored. Options of other schedulers are ignored
        (as diffusers does, so ``DPMSolverMultistepScheduler.from_config(ddim.config)`` works).
        Options diffusers has for this scheduler but cellsynth does not implement are accepted
        only at diffusers' default value; anything else raises a ValueError naming the option.
        """
        merged = {**(dict(config) if config is not None else {}), **kwargs}
        params: dict[str, Any] = {}
        ignored = []
        for key, value in merged.items():
            if key.startswith("_"):
                continue
            if key in cls._config_names:
                params[key] = value
            elif key in cls._diffusers_only:
                default = cls._diffusers_only[key]
                if not _same_value(value, default):
                    raise ValueError(
                        f"{key}={value!r} is not supported by cellsynth's {cls.__name__} "
                        f"(only the diffusers default {default!r})"
                    )
            else:
                ignored.append(key)
        if ignored and not all(k in _KNOWN_OPTIONS for k in ignored):
            unknown = sorted(k for k in ignored if k not in _KNOWN_OPTIONS)
            warnings.warn(
                f"{cls.__name__}.from_config ignores unknown options {unknown}",
                UserWarning,
                stacklevel=2,
            )
        return cls(**params)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self._config.items() if k != "trained_betas")
        return f"{type(self).__name__}({opts})"

    # --- diffusers compatibility ----------------------------------------------------------

    def _select_timesteps(
        self, num_inference_steps: int | None, timesteps: Any, spacing_fn=None
    ) -> np.ndarray:
        """The int64 timestep list of ``set_timesteps``: a validated custom list, or S of them.

        ``spacing_fn(T, S, spacing, steps_offset)`` builds the list (default ``_core.timesteps``;
        DPM-Solver passes its own).
        """
        T = self.num_train_timesteps
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("pass exactly one of num_inference_steps and timesteps")
        if timesteps is not None:
            return _core.validate_timesteps(timesteps, T)
        S = check_int("num_inference_steps", num_inference_steps, 1, T)
        fn = spacing_fn or _core.timesteps
        return fn(T, S, self._config["timestep_spacing"], self._config["steps_offset"])

    def scale_model_input(self, sample: Any, timestep: Any = None) -> Any:
        """The model input at ``timestep``: the sample itself (no scaling in these schedulers)."""
        return sample

    # --- noise ----------------------------------------------------------------------------

    @property
    def seed(self) -> int:
        return int(self._config["seed"])

    def init_noise(self, n_cells: int, n_genes: int, cell_offset: int = 0) -> np.ndarray:
        """The initial noise x_T, float32 [n_cells, n_genes] NumPy.

        Philox normals keyed by (seed, cell_offset + row, the reserved step 2^32 - 1, gene): a
        cell's x_T depends on its global index only, not on the batch it is drawn in.
        """
        n_cells = check_int("n_cells", n_cells, 0)
        n_genes = check_int("n_genes", n_genes, 0)
        out = np.empty((n_cells, n_genes), dtype=np.float32)
        _core.randn(out, self.seed, INITIAL_NOISE_STEP, check_int("cell_offset", cell_offset, 0))
        return out

    def init_noise_like(self, like: Any, cell_offset: int = 0) -> Any:
        """x_T shaped like ``like`` (a 2-D NumPy array, torch tensor or CUDA device array; same
        device for CUDA, drawn on the device array's ``stream``)."""
        cell_offset = check_int("cell_offset", cell_offset, 0)
        if _is_device_array(like):
            shape = tuple(int(d) for d in like.shape)
            if len(shape) != 2:
                raise ValueError(f"like must be 2-D [n_cells, n_genes], got {shape}")
            if not _core.cuda_compiled:
                raise RuntimeError("cellsynth was built without CUDA: no device arrays")
            handle = _stream_handle(getattr(like, "stream", 0))
            out = _core.DeviceArray(shape, "float32", int(like.device), stream=handle)
            _core.cuda_randn(
                out.data_ptr(),
                shape[0],
                shape[1],
                self.seed,
                INITIAL_NOISE_STEP,
                cell_offset,
                stream=handle,
                device=int(like.device),
            )
            return out
        if not _is_tensor(like):
            n_cells, n_genes = np.shape(like)
            return self.init_noise(n_cells, n_genes, cell_offset)
        torch = _torch_module()
        if like.ndim != 2:
            raise ValueError(f"like must be 2-D [n_cells, n_genes], got {tuple(like.shape)}")
        n_cells, n_genes = (int(s) for s in like.shape)
        if like.is_cuda and _core.cuda_compiled:
            out = torch.empty((n_cells, n_genes), dtype=torch.float32, device=like.device)
            _core.cuda_randn(
                out.data_ptr(),
                n_cells,
                n_genes,
                self.seed,
                INITIAL_NOISE_STEP,
                cell_offset,
                stream=torch.cuda.current_stream(like.device).cuda_stream,
                device=like.device.index if like.device.index is not None else 0,
            )
            return out
        x = torch.from_numpy(self.init_noise(n_cells, n_genes, cell_offset))
        return x.to(like.device)

    # --- helpers for step() ---------------------------------------------------------------

    def _step_options(self, step_index: int, cell_offset: Any, truncate: bool, **extra: Any):
        cfg = self._config
        return dict(
            prediction_type=cfg["prediction_type"],
            clip_sample=cfg["clip_sample"],
            clip_sample_range=cfg["clip_sample_range"],
            thresholding=cfg["thresholding"],
            dynamic_thresholding_ratio=cfg["dynamic_thresholding_ratio"],
            sample_max_value=cfg["sample_max_value"],
            seed=self.seed,
            step_index=step_index,
            cell_offset=_cell_offset(cell_offset),
            truncate=truncate,
            truncate_threshold=cfg["truncate_threshold"],
            **extra,
        )


def _cell_offset(cell_offset: Any) -> int:
    if isinstance(cell_offset, (bool, np.bool_)) or not isinstance(cell_offset, (int, np.integer)):
        raise ValueError(f"cell_offset must be an integer >= 0, got {cell_offset!r}")
    if cell_offset < 0:
        raise ValueError(f"cell_offset must be >= 0, got {cell_offset}")
    return int(cell_offset)


def _same_value(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    try:
        return bool(a == b) or (
            isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
        )
    except Exception:  # noqa: BLE001 - arrays and other odd values are simply "different"
        return False


# Options any diffusers DDIM / DDPM / DPM-Solver config may carry (ignored silently when they do
# not apply to the scheduler being built, as diffusers does).
_KNOWN_OPTIONS = frozenset(
    {
        "num_train_timesteps",
        "beta_start",
        "beta_end",
        "beta_schedule",
        "trained_betas",
        "clip_sample",
        "set_alpha_to_one",
        "steps_offset",
        "prediction_type",
        "thresholding",
        "dynamic_thresholding_ratio",
        "clip_sample_range",
        "sample_max_value",
        "timestep_spacing",
        "rescale_betas_zero_snr",
        "variance_type",
        "solver_order",
        "algorithm_type",
        "solver_type",
        "lower_order_final",
        "euler_at_final",
        "use_karras_sigmas",
        "use_exponential_sigmas",
        "use_beta_sigmas",
        "use_lu_lambdas",
        "use_flow_sigmas",
        "flow_shift",
        "final_sigmas_type",
        "lambda_min_clipped",
        "use_dynamic_shifting",
        "time_shift_type",
        "bug_compatible_prev_timestep",
        "truncate_final",
        "truncate_threshold",
        "seed",
    }
)


class ListedTimestepsScheduler(SchedulerBase):
    """A scheduler whose previous timestep is looked up in its timestep list (DDIM, DDPM)."""

    _prev_timesteps: np.ndarray | None = None
    _index: dict[int, int] = {}

    def _use_timesteps(self, ts: np.ndarray) -> None:
        """Adopt ``ts`` and precompute each step's previous timestep and position."""
        self.timesteps = ts
        self._prev_timesteps = _core.previous_timesteps(
            ts, self.num_train_timesteps, self._config["bug_compatible_prev_timestep"]
        )
        self._index = {int(t): i for i, t in enumerate(ts.tolist())}

    def index_for_timestep(self, timestep: Any) -> int:
        """Position of ``timestep`` in :attr:`timesteps`; a ValueError names it when absent."""
        if self._prev_timesteps is None:
            raise ValueError(
                "the number of inference steps is not set: call set_timesteps(...) before step()"
            )
        t = as_timestep(timestep)
        try:
            return self._index[t]
        except KeyError:
            raise ValueError(
                f"timestep {t} is not one of the {len(self.timesteps)} timesteps set by "
                "set_timesteps"
            ) from None

    def previous_timestep(self, timestep: Any) -> int:
        """The timestep the step from ``timestep`` lands on (-1: the clean end)."""
        return int(self._prev_timesteps[self.index_for_timestep(timestep)])
