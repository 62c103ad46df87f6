"""The loop that makes a chunk of cells: per batch, keyed noise, the denoiser with the C++
scheduler, the decoder of a latent bundle, and counts.

Generation never branches on the backend: the denoiser (and decoder) behind one interface come
from :func:`cellsynth.backends.load_engine`; the update rule, the noise and the final
zero-negation truncation are the scheduler's (:mod:`cellsynth.scheduler`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import scipy.sparse as sp

from cellsynth.bundle.load import Bundle
from cellsynth.errors import DataError
from cellsynth.generation.conditions import LabelRuns
from cellsynth.generation.counts import (
    LibraryModel,
    counts_and_expression,
    draw_library_sizes,
    expression_to_counts,
)
from cellsynth.generation.depth import depth_conditioning
from cellsynth.generation.options import SamplingOptions

# log1p-normalised expression beyond this is garbage, not a cell (a real cell's values stay below
# log1p(target_sum), about 9; e^1000 overflows every float): it is refused, never written.
MAX_LOG_EXPRESSION = 1000.0


class ChunkSampler:
    """Everything a chunk of cells needs: bundle, denoiser (and decoder, for latent diffusion),
    scheduler and sampling options; :meth:`chunk` makes cells ``start .. stop - 1``."""

    def __init__(self, b: Bundle, denoiser: Any, decoder: Any, sampling: SamplingOptions) -> None:
        self.b, self.denoiser, self.decoder = b, denoiser, decoder
        self.count_model = decoder is not None and decoder.counts
        self.mean = sampling.mean
        self.library = (
            LibraryModel.from_dict(b.config["latent"]["library"]) if self.count_model else None
        )
        self.steps, self.seed = sampling.steps, sampling.seed
        self.guidance, self.batch_size = sampling.guidance, sampling.batch_size
        self.sched = make_scheduler(b, sampling.scheduler, sampling.timestep_spacing, self.seed)
        self.step_options = {"eta": float(sampling.eta)} if sampling.scheduler == "ddim" else {}
        # A depth-conditioned model takes each cell's library-size bin as a last label column.
        self.depth = depth_conditioning(b.config)
        self.null = np.asarray(b.model_label_sizes, dtype=np.int64)  # each column's null class
        self.width = b.width  # G, or the latent width D
        # Told the global position reached (cells, fractional within a batch) after every
        # denoising step, so a progress bar moves even when one batch takes minutes.
        self.progress: Callable[[float], None] | None = None

    def denoised(
        self, codes: LabelRuns, start: int, stop: int
    ) -> Iterator[tuple[int, int, np.ndarray]]:
        """(first cell, end, final model-space values [B, G] or latent codes [B, D]) per batch."""
        for s in range(start, stop, self.batch_size):
            e = min(s + self.batch_size, stop)
            labels = codes[s:e]  # [B, K]
            if self.depth is not None:  # + the depth bin of each cell's keyed library size
                labels = self.depth.draw(labels, self.seed, s)[1]  # [B, K + 1]
            self.sched.set_timesteps(self.steps)  # also clears a multistep solver's history
            x_T = self.sched.init_noise(e - s, self.width, cell_offset=s)  # [B, G] or [B, D]
            null = np.broadcast_to(self.null, labels.shape).copy()  # [B, K]
            on_step = None
            if self.progress is not None:
                on_step = functools.partial(
                    _step_done, self.progress, s, e, len(self.sched.timesteps)
                )
            # on_step only when set: a Denoiser written before it existed still works
            extra = {} if on_step is None else {"on_step": on_step}
            x0 = self.denoiser.denoise(
                self.sched, x_T, labels, null, self.guidance, s, self.step_options, **extra
            )  # [B, G] (or [B, D]) float32
            if not np.isfinite(x0).all():
                raise DataError(
                    f"cells {s}..{e - 1} came out non-finite (guidance {self.guidance}): the "
                    "model or the sampling options are broken; nothing was written for them"
                )
            yield s, e, x0

    def batches(self, codes: LabelRuns, start: int, stop: int) -> Iterator[np.ndarray]:
        """Cells [B, G] float32 (log-normalised expression) of each batch."""
        for s, e, x0 in self.denoised(codes, start, stop):
            x = x0 if self.decoder is None else self.decoder(x0)  # [B, G] float32
            top = float(np.abs(x).max(initial=0.0))
            if not top <= MAX_LOG_EXPRESSION:
                raise DataError(
                    f"cells {s}..{e - 1} hold log-normalised values up to {top:.3g} (a real "
                    f"cell's stay below about 9; guidance {self.guidance}): the model or the "
                    "sampling options are broken; nothing was written for them"
                )
            yield x

    def chunk(self, codes: LabelRuns, start: int, stop: int, counts: bool) -> dict[str, Any]:
        """Cells ``start .. stop - 1``: {'X': CSR float32 [n, G]} (+ 'counts': CSR int32)."""
        if self.count_model and not self.mean:
            return self._count_chunk(codes, start, stop)
        X = sp.vstack(
            [sp.csr_matrix(x) for x in self.batches(codes, start, stop)], format="csr"
        ).astype(np.float32)
        out = {"X": X}
        if counts:
            record = self.b.preprocessing
            if self.depth is not None:  # the library sizes the cells were conditioned on
                sizes = self.depth.draw(codes[start:stop], self.seed, start)[0]
            else:
                sizes = draw_library_sizes(record.library_size, stop - start, self.seed, start)
            out["counts"] = expression_to_counts(X, sizes, record.target_sum)
        return out

    def _count_chunk(self, codes: LabelRuns, start: int, stop: int) -> dict[str, Any]:
        """A count model's cells: library sizes and NB counts drawn per cell (keyed); X of them."""
        xs, cs = [], []
        for s, e, latents in self.denoised(codes, start, stop):
            rho, zero_prob = self.decoder.count_parameters(self.decoder.unscale(latents))
            library = self.library.draw(codes[s:e], self.seed, s)  # [B]
            c, x = counts_and_expression(
                rho, self.decoder.theta, zero_prob, library, self.decoder.target_sum, self.seed, s
            )
            cs.append(c)
            xs.append(x)
        return {
            "X": sp.vstack(xs, format="csr").astype(np.float32),
            "counts": sp.vstack(cs, format="csr").astype(np.int32),
        }


def _step_done(report: Callable[[float], None], s: int, e: int, steps: int, done: int) -> None:
    """Progress of cells s..e-1 after ``done`` of ``steps`` steps."""
    report(s + (e - s) * done / steps)


def make_scheduler(b: Bundle, scheduler: str, timestep_spacing: str, seed: int):
    """The bundle's scheduler: its training schedule and prediction type, negatives truncated on
    the last step (not for latent codes, which are not zero-negated), noise keyed by ``seed``."""
    from cellsynth.scheduler import scheduler_for_bundle

    return scheduler_for_bundle(
        b,
        scheduler,
        timestep_spacing=timestep_spacing,
        truncate_final=b.kind != "latent_diffusion",
        seed=seed,
    )
