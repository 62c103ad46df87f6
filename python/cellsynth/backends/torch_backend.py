"""The PyTorch backend: the bundle's module in eager mode, on the CPU or a CUDA device.

On CUDA with a fixed batch size, the model call is captured once as a CUDA graph per batch size
and replayed at every step (static input buffers, one copy in per step); the scheduler step then
runs on the same stream through the core's CUDA kernel.

:class:`TorchDecoder` is the matching decoder of latent generation: the autoencoder's module.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cellsynth.backends.base import Decoder, Denoiser
from cellsynth.bundle.load import Bundle
from cellsynth.torch_entry import require_torch


class TorchDenoiser(Denoiser):
    """The bundle's ``torch.nn.Module`` behind the :class:`Denoiser` interface.

    Parameters
    ----------
    bundle : Bundle
    device : str
        'cpu', 'cuda' or 'cuda:N'.
    weights : {'ema', 'model'}
    threads : int, optional
        CPU threads for torch (``torch.set_num_threads``); default leaves torch's choice.
    cuda_graphs : bool
        Capture the model call as a CUDA graph per batch size (CUDA only).
    """

    name = "torch"

    def __init__(
        self,
        bundle: Bundle,
        device: str = "cpu",
        weights: str = "ema",
        threads: int | None = None,
        cuda_graphs: bool = True,
    ) -> None:
        super().__init__()
        torch = require_torch()
        self._torch = torch
        if threads:
            torch.set_num_threads(int(threads))
        self._dev = torch.device(device)
        if self._dev.type == "cuda" and self._dev.index is None:
            self._dev = torch.device("cuda", torch.cuda.current_device())
        self.device = str(self._dev)
        self.model = bundle.to_torch(weights=weights, device=self.device)
        self._graphs: dict[int, tuple[Any, Any, Any, Any, Any]] = {}
        self._use_graphs = cuda_graphs and self._dev.type == "cuda"
        self.details = {
            "weights": weights,
            "threads": torch.get_num_threads() if self._dev.type == "cpu" else None,
            "cuda_graphs": self._use_graphs,
            "torch_version": str(torch.__version__),
        }

    def set_cuda_graphs(self, enabled: bool) -> None:
        """Turn graph capture on or off (on a GPU; the CPU never captures): ``cellsynth bench``
        times eager against captured calls with one loaded model."""
        self._use_graphs = bool(enabled) and self._dev.type == "cuda"
        self.details["cuda_graphs"] = self._use_graphs

    def __call__(self, x_t: Any, timesteps: Any, labels: Any) -> Any:
        with self._torch.inference_mode():
            if self._use_graphs:
                return self._replay(x_t, timesteps, labels)
            out = self.model(x_t, timesteps, labels)  # [B, G]
            return out.float().contiguous() if out.data_ptr() != x_t.data_ptr() else out.clone()

    def _replay(self, x_t: Any, timesteps: Any, labels: Any) -> Any:
        """Run the model through a CUDA graph captured for this batch size."""
        torch = self._torch
        B = int(x_t.shape[0])
        if B not in self._graphs:
            sx, st, sl = x_t.clone(), timesteps.clone(), labels.clone()
            side = torch.cuda.Stream(self._dev)
            side.wait_stream(torch.cuda.current_stream(self._dev))
            with torch.cuda.stream(side):  # warm-up outside the graph, as PyTorch requires
                for _ in range(2):
                    self.model(sx, st, sl)
            torch.cuda.current_stream(self._dev).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                so = self.model(sx, st, sl).float()
            self._graphs[B] = (graph, sx, st, sl, so)
        graph, sx, st, sl, so = self._graphs[B]
        sx.copy_(x_t)
        st.copy_(timesteps)
        sl.copy_(labels)
        graph.replay()
        return so.clone()  # the static output is overwritten by the next replay

    def to_native(self, host: np.ndarray) -> Any:
        t = self._torch.from_numpy(np.ascontiguousarray(host))
        return t.to(self._dev) if self._dev.type != "cpu" else t

    def to_host(self, x: Any) -> np.ndarray:
        return x.detach().cpu().numpy()

    def twice(self, x: Any) -> Any:
        return self._torch.cat([x, x])

    def guide(self, out: Any, scale: float) -> Any:
        cond, uncond = out.chunk(2)  # each [B, G]
        return (uncond + scale * (cond - uncond)).contiguous()

    def close(self) -> None:
        self._graphs.clear()


class TorchDecoder(Decoder):
    """An autoencoder's decoder as its eval-mode ``torch.nn.Module`` (``decode``).

    Parameters
    ----------
    autoencoder : Bundle
        The autoencoder bundle (``Bundle.autoencoder`` of a latent-diffusion bundle).
    latent_scale : float
        Divides the latents before decoding (see :class:`Decoder`).
    device : str
        'cpu', 'cuda' or 'cuda:N'.
    threads : int, optional
        CPU threads for torch; default leaves torch's choice.
    """

    name = "torch"

    def __init__(
        self,
        autoencoder: Bundle,
        latent_scale: float = 1.0,
        device: str = "cpu",
        threads: int | None = None,
    ) -> None:
        super().__init__(autoencoder, latent_scale)
        torch = require_torch()
        self._torch = torch
        if threads:
            torch.set_num_threads(int(threads))
        self._dev = torch.device(device)
        self.device = str(self._dev)
        self.model = autoencoder.to_torch(device=self.device)  # eval mode
        self.details = {"weights": "model", "torch_version": str(torch.__version__)}

    def run(self, codes: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            z = self._torch.from_numpy(codes).to(self._dev)  # [B, D]
            if not self.counts:
                return self.model.decode(z).float().cpu().numpy()  # [B, G]
            rho, _, pi = self.model.decode_counts(z)  # [B, G], [G], [B, G] or None
            out = rho if pi is None else self._torch.cat([rho, pi], dim=1)
            return out.float().cpu().numpy()  # [B, G] or [B, 2G]

    def close(self) -> None:
        self.model = None
