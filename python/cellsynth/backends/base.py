"""The one denoiser interface every backend implements, the denoising loop written against it, and
the decoder interface that latent generation ends with (:class:`Decoder`).

A backend maps ``(x_t [B, G] float32, timesteps [B] int64, labels [B, K] int64)`` to the model
output ``[B, G] float32``, in whatever memory it prefers (NumPy arrays on the host, torch tensors,
CUDA device buffers): :meth:`Denoiser.to_native` / :meth:`Denoiser.to_host` move data in and out,
and :meth:`Denoiser.denoise` runs a whole batch from x_T to x_0 with the C++ scheduler, which
steps host and CUDA memory alike. Generation calls only ``denoise``, so it never branches on the
backend; a backend may override ``denoise`` wholesale (TensorRT replays the loop as a CUDA graph).

Classifier-free guidance is part of the loop: the model sees ``[x; x]`` with the cells' labels and
the null labels, and the scheduler steps on ``uncond + g * (cond - uncond)``.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from cellsynth.errors import BundleError


@dataclass
class StepTimes:
    """Where the time of a :meth:`Denoiser.denoise` went, for benchmarks (``timer=``).

    The base loop adds host-clock seconds of each model call (guidance's combination included)
    to ``model_s`` and of each scheduler step to ``step_s``, and sets ``split`` when it ran on
    the CPU. On a GPU (asynchronous work) or in a backend that replaces the loop wholesale (a
    CUDA graph) ``split`` stays False: a host clock tells only the whole apart.
    """

    model_s: float = 0.0
    step_s: float = 0.0
    split: bool = False


class Denoiser(ABC):
    """A bundle's denoiser on one backend.

    Attributes
    ----------
    name : str
        'torch', 'onnxruntime' or 'tensorrt'.
    device : str
        Where it runs: 'cpu' or 'cuda:N'.
    details : dict
        What a run's provenance should record about it (precision, provider, threads, ...).
    """

    name: str = ""
    device: str = "cpu"
    #: Threads of the C++ scheduler steps while this backend denoises; None keeps the run's.
    #: A backend whose own thread pool busy-waits between calls on the same cores sets 1: a
    #: second pool stepping in parallel would fight it for the cores (measured 2x slower on 2
    #: cores for onnxruntime), and a step is a small share of the time anyway.
    step_threads: int | None = None

    def __init__(self) -> None:
        self.details: dict[str, Any] = {}

    @abstractmethod
    def __call__(self, x_t: Any, timesteps: Any, labels: Any) -> Any:
        """Model output [B, G] float32 for x_t [B, G] float32, timesteps [B] int64 and
        labels [B, K] int64, all native arrays of this backend. Never returns ``x_t`` itself."""

    # Memory movement and the few array operations guidance needs. The defaults are NumPy.
    def to_native(self, host: np.ndarray) -> Any:
        """A native copy of a host array (float32 [B, G] or int64 [B, K] / [B])."""
        return np.ascontiguousarray(host)

    def to_host(self, x: Any) -> np.ndarray:
        """A NumPy array [B, G] float32 with the values of native array ``x``."""
        return np.asarray(x)

    def timesteps(self, t: int, n: int) -> Any:
        """Native int64 [n] filled with ``t``."""
        return self.to_native(np.full(n, t, dtype=np.int64))

    def twice(self, x: Any) -> Any:
        """Native ``[x; x]`` [2B, G] (guidance feeds each cell with and without its labels)."""
        return np.concatenate([x, x])

    def guide(self, out: Any, scale: float) -> Any:
        """Native ``uncond + scale * (cond - uncond)`` [B, G] from out = ``[cond; uncond]``."""
        cond, uncond = np.split(out, 2)
        return np.ascontiguousarray(uncond + np.float32(scale) * (cond - uncond), np.float32)

    def denoise(
        self,
        scheduler: Any,
        x_T: np.ndarray,
        labels: np.ndarray,
        null_labels: np.ndarray,
        guidance: float,
        cell_offset: int,
        step_options: Mapping[str, Any],
        on_step: Callable[[int], None] | None = None,
        timer: StepTimes | None = None,
    ) -> np.ndarray:
        """Run one batch from x_T to x_0.

        Parameters
        ----------
        scheduler : cellsynth scheduler
            Already ``set_timesteps``; its last step truncates negatives.
        x_T : np.ndarray float32 [B, G]
            Initial noise (keyed by global cell index, see :mod:`cellsynth.generation.run`).
        labels, null_labels : np.ndarray int64 [B, K]
            The cells' label codes and the null codes used by guidance.
        guidance : float
            Classifier-free guidance scale; 1 means plain conditional sampling.
        cell_offset : int
            Global index of the first cell (keys the per-step noise).
        step_options : dict
            Extra ``scheduler.step`` keywords (DDIM's ``eta``).
        on_step : callable, optional
            Called with the number of steps done after each step (progress on slow machines).
        timer : StepTimes, optional
            Adds the seconds of the model calls and of the scheduler steps to it (benchmarks
            time the loop generation runs, not a copy of it); None: no clock is read.

        Returns
        -------
        np.ndarray float32 [B, G]
        """
        guided = guidance != 1.0
        x = self.to_native(np.ascontiguousarray(x_T, dtype=np.float32))  # [B, G]
        codes = np.concatenate([labels, null_labels]) if guided else labels  # [B or 2B, K]
        lab = self.to_native(np.ascontiguousarray(codes, dtype=np.int64))
        n_in = len(codes)
        clock = time.perf_counter if timer is not None else None
        with step_threads(self.step_threads):
            for i, t in enumerate(scheduler.timesteps.tolist()):
                a = clock() if clock else 0.0
                out = self(self.twice(x) if guided else x, self.timesteps(t, n_in), lab)
                if guided:
                    out = self.guide(out, guidance)  # [B, G]
                b = clock() if clock else 0.0
                # In place; the last step also truncates negatives to zero.
                scheduler.step(out, t, x, cell_offset=cell_offset, out=x, **step_options)
                if clock:
                    timer.model_s += b - a
                    timer.step_s += clock() - b
                if on_step is not None:
                    on_step(i + 1)
        if timer is not None:
            # A host clock around asynchronous device work measures launches, not the work.
            timer.split = self.device == "cpu"
        return self.to_host(x)

    def close(self) -> None:
        """Free device memory and sessions (also done when garbage-collected)."""
        return None

    def describe(self) -> dict[str, Any]:
        """Provenance: engine name, device and backend details."""
        return {"engine": self.name, "device": self.device, **self.details}


@contextmanager
def step_threads(n: int | None) -> Iterator[None]:
    """Run the C++ core on ``n`` threads inside the block (None: unchanged), restored after."""
    if n is None:
        yield
        return
    from cellsynth import _core

    before = _core.get_num_threads()
    _core.set_num_threads(int(n))
    try:
        yield
    finally:
        _core.set_num_threads(before)


class Decoder(ABC):
    """An autoencoder's decoder on one backend: latent codes [B, D] -> cells [B, G].

    Latent generation denoises codes with a :class:`Denoiser` and ends with a decoder chosen with
    it (same engine family and device, see :func:`cellsynth.backends.load_decoder`). Backends
    implement :meth:`run`, the decoder network alone; this class turns its output into cells.

    Two kinds of decoder (``likelihood``):

    - 'mse' (the scDD autoencoder): the network outputs log-normalised expression [B, G]; values
      below the autoencoder's ``zero_threshold`` (and negatives) become 0 (:meth:`decode`).
    - 'nb' / 'zinb' (a count autoencoder): the network outputs each gene's expected share of the
      cell's library, rho [B, G] (and for 'zinb' also the zero probabilities: [B, 2G], rho
      first); the per-gene inverse dispersion theta [G] is read from the bundle's weights.
      :meth:`count_parameters` gives (rho, zero probability); generation draws the counts.
      :meth:`decode` gives the expected expression ``log1p((1 - pi) rho * target_sum)``.

    Parameters
    ----------
    autoencoder : Bundle
        The autoencoder bundle (its ``config['decode']['zero_threshold']``).
    latent_scale : float
        The factor the latent denoiser's codes carry (``config['latent']['scale']`` of a
        latent-diffusion bundle): :meth:`__call__` divides by it before decoding.

    Attributes
    ----------
    name, device, details : as for :class:`Denoiser`.
    n_genes, latent_dim : int
        G and D.
    likelihood : {'mse', 'nb', 'zinb'}
    theta : np.ndarray float32 [G] or None
        The count decoder's inverse dispersion per gene.
    target_sum : float
        The preprocessing's normalisation target.
    """

    name: str = ""
    device: str = "cpu"
    #: Threads of the C++ scheduler steps while this backend denoises; None keeps the run's.
    #: A backend whose own thread pool busy-waits between calls on the same cores sets 1: a
    #: second pool stepping in parallel would fight it for the cores (measured 2x slower on 2
    #: cores for onnxruntime), and a step is a small share of the time anyway.
    step_threads: int | None = None

    def __init__(self, autoencoder: Any, latent_scale: float = 1.0) -> None:
        arch = autoencoder.architecture
        self.n_genes = int(arch["n_genes"])
        self.latent_dim = int(arch["latent_dim"])
        self.likelihood = str(arch.get("likelihood", "mse"))
        self.target_sum = float(autoencoder.preprocessing.target_sum)
        self.zero_threshold = float(autoencoder.config.get("decode", {}).get("zero_threshold", 0))
        self.latent_scale = float(latent_scale)
        if not (np.isfinite(self.latent_scale) and self.latent_scale > 0):
            raise ValueError(f"the latent scale must be a positive number, got {latent_scale}")
        self.theta = dispersion(autoencoder) if self.counts else None
        self.details: dict[str, Any] = {}

    @property
    def counts(self) -> bool:
        """Whether the decoder is a count model (NB / ZINB)."""
        return self.likelihood in ("nb", "zinb")

    @abstractmethod
    def run(self, codes: np.ndarray) -> np.ndarray:
        """The decoder network's output float32 for codes float32 [B, D] (host arrays):
        expression [B, G] ('mse'), rho [B, G] ('nb') or rho and zero probabilities [B, 2G]."""

    def _network(self, codes: np.ndarray) -> np.ndarray:
        codes = np.ascontiguousarray(codes, dtype=np.float32)
        if codes.ndim != 2 or codes.shape[1] != self.latent_dim:
            raise ValueError(f"codes must be [B, {self.latent_dim}], got shape {codes.shape}")
        out = np.asarray(self.run(codes), dtype=np.float32)
        width = 2 * self.n_genes if self.likelihood == "zinb" else self.n_genes
        if out.shape != (len(codes), width):
            raise ValueError(f"the decoder returned {out.shape}, expected [B, {width}]")
        return out

    def count_parameters(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(rho [B, G], zero probability [B, G] or None) of autoencoder codes [B, D]."""
        if not self.counts:
            raise ValueError(f"a {self.likelihood!r} decoder has no count parameters")
        out = self._network(codes)
        if self.likelihood == "zinb":
            return out[:, : self.n_genes], out[:, self.n_genes :]
        return out, None

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Cells float32 [B, G] >= 0 of autoencoder codes [B, D]: log-normalised expression
        (an 'mse' decoder's values below the zero threshold, and negatives, set to 0; a count
        decoder's expected expression)."""
        if self.counts:
            rho, pi = self.count_parameters(codes)
            share = rho if pi is None else rho * (1.0 - pi)
            return np.log1p(share * np.float32(self.target_sum)).astype(np.float32)
        out = self._network(codes)
        out[out < max(self.zero_threshold, 0.0)] = 0.0
        return out

    def unscale(self, latents: np.ndarray) -> np.ndarray:
        """The latent denoiser's final codes [B, D] divided by the latent scale."""
        return np.asarray(latents, dtype=np.float32) / np.float32(self.latent_scale)

    def __call__(self, latents: np.ndarray) -> np.ndarray:
        """Cells [B, G] of the latent denoiser's final codes [B, D] (divided by the scale)."""
        return self.decode(self.unscale(latents))

    def close(self) -> None:
        """Free the model or session."""
        return None

    def describe(self) -> dict[str, Any]:
        """Provenance: engine name, device, likelihood, zero threshold, latent scale, details."""
        return {
            "engine": self.name,
            "device": self.device,
            "likelihood": self.likelihood,
            "zero_threshold": self.zero_threshold,
            "latent_scale": self.latent_scale,
            **self.details,
        }


def dispersion(autoencoder: Any) -> np.ndarray:
    """A count autoencoder's inverse dispersion theta [G] (float32), read without torch.

    The parameter ``log_theta`` [G + 1] of its ``model.safetensors`` (the last entry belongs to
    the pooled other genes, which generation does not draw).
    """
    from safetensors.numpy import load_file

    from cellsynth.bundle.format import WEIGHT_FILES

    path = autoencoder.path / WEIGHT_FILES["model"]
    log_theta = load_file(str(path)).get("log_theta")
    n_genes = int(autoencoder.architecture["n_genes"])
    if log_theta is None or log_theta.shape != (n_genes + 1,):
        raise BundleError(f"{path} holds no log_theta of {n_genes + 1} values for a count decoder")
    return np.exp(log_theta[:n_genes].astype(np.float64)).astype(np.float32)
