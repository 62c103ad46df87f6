"""
Type stub of the compiled core (csrc/bindings/), made by pybind11-stubgen from a CUDA
build; remake it after changing the bindings:
    pybind11-stubgen cellsynth._core -o python --numpy-array-use-type-var
tests/test_layout.py checks that it lists every name the module has.

cellsynth compiled core: noise schedules, timesteps, Philox noise and the fused sampler step (CPU, and CUDA when built with it)
"""
from __future__ import annotations
import collections.abc
import numpy
import numpy.typing
import typing
__all__: list[str] = ['COUNT_STREAM_BIT', 'CudaGraph', 'CudaStream', 'DeviceArray', 'INITIAL_NOISE_STEP', 'StepCoefficients', 'alphas_cumprod', 'cuda_compiled', 'cuda_device_count', 'cuda_device_name', 'cuda_device_properties', 'cuda_guide', 'cuda_randn', 'cuda_randn_device_offset', 'cuda_sample_counts', 'cuda_step', 'ddim_coefficients', 'ddpm_coefficients', 'dpmsolver_coefficients', 'dpmsolver_timesteps', 'dynamic_threshold', 'get_num_threads', 'make_betas', 'philox4x32_10', 'previous_timesteps', 'randn', 'rescale_zero_terminal_snr', 'sample_counts', 'set_num_threads', 'step', 'timesteps', 'validate_betas', 'validate_timesteps']
class StepCoefficients:
    """
    x_prev = a x0 + b eps + c x_t + d h + sigma z (step.h)
    """
    def __init__(self, *, sqrt_alpha_prod: typing.SupportsFloat | typing.SupportsIndex = 1.0, sqrt_one_minus_alpha_prod: typing.SupportsFloat | typing.SupportsIndex = 0.0, a: typing.SupportsFloat | typing.SupportsIndex = 0.0, b: typing.SupportsFloat | typing.SupportsIndex = 0.0, c: typing.SupportsFloat | typing.SupportsIndex = 0.0, d: typing.SupportsFloat | typing.SupportsIndex = 0.0, sigma: typing.SupportsFloat | typing.SupportsIndex = 0.0) -> None:
        ...
    def __repr__(self) -> str:
        ...
    @property
    def a(self) -> float:
        ...
    @property
    def b(self) -> float:
        ...
    @property
    def c(self) -> float:
        ...
    @property
    def d(self) -> float:
        ...
    @property
    def sigma(self) -> float:
        ...
    @property
    def sqrt_alpha_prod(self) -> float:
        ...
    @property
    def sqrt_one_minus_alpha_prod(self) -> float:
        ...
class CudaStream:
    """
    A non-blocking CUDA stream, destroyed with the object.
    """
    def __init__(self, device: typing.SupportsInt | typing.SupportsIndex = 0) -> None:
        ...
    def __int__(self) -> int:
        ...
    def __repr__(self) -> str:
        ...
    def close(self) -> None:
        """
        Destroy the stream now (also done when collected).
        """
    def synchronize(self) -> None:
        """
        Wait until all work queued on the stream is done.
        """
    @property
    def device(self) -> int:
        ...
    @property
    def handle(self) -> int:
        """
        The cudaStream_t as an int (for TensorRT, onnxruntime, cuda_step).
        """
class CudaGraph:
    """
    An instantiated CUDA graph captured from a stream (end_capture).
    """
    @staticmethod
    def abort_capture(stream: typing.Any, device: typing.SupportsInt | typing.SupportsIndex = 0) -> None:
        """
        End a capture in progress on `stream` and discard it (no-op when none is).
        """
    @staticmethod
    def begin_capture(stream: typing.Any, mode: str = 'thread_local', device: typing.SupportsInt | typing.SupportsIndex = 0) -> None:
        """
        Start recording the work queued on `stream` (a CudaStream or handle) instead of running it. Device memory cannot be allocated until the capture ends.
        """
    @staticmethod
    def end_capture(stream: typing.Any, device: typing.SupportsInt | typing.SupportsIndex = 0) -> CudaGraph:
        """
        Stop recording and instantiate the graph; RuntimeError when the capture was invalidated (the stream is out of capture mode either way).
        """
    @staticmethod
    def is_capturing(stream: typing.Any, device: typing.SupportsInt | typing.SupportsIndex = 0) -> bool:
        ...
    def close(self) -> None:
        """
        Free the graph now (also done when collected).
        """
    def launch(self, stream: typing.Any) -> None:
        """
        Replay the graph on `stream` (asynchronous).
        """
    @property
    def device(self) -> int:
        ...
    @property
    def num_nodes(self) -> int:
        ...
class DeviceArray:
    """
    A C-contiguous array in CUDA device memory (cudaMalloc'd, freed with the last reference). Operations run on `stream` unless given one; host copies wait for it.
    """
    def __init__(self, shape: typing.Any, dtype: str = 'float32', device: typing.SupportsInt | typing.SupportsIndex = 0, stream: typing.Any = None) -> None:
        """
        Uninitialised device memory of `shape` and `dtype` ('float32', 'float16', 'int32', 'int64') on CUDA device `device`.
        """
    def __len__(self) -> int:
        ...
    def __repr__(self) -> str:
        ...
    def copy_from_device(self, other: DeviceArray, stream: typing.Any = None, dst_offset_bytes: typing.SupportsInt | typing.SupportsIndex = 0, src_offset_bytes: typing.SupportsInt | typing.SupportsIndex = 0, nbytes: typing.Any = None) -> None:
        """
        Queue a device-to-device copy of `nbytes` (default: the rest of `other`) from `other` at src_offset_bytes to this array at dst_offset_bytes, on `stream` (capturable).
        """
    def copy_from_host(self, host: typing.Any, stream: typing.Any = None) -> None:
        """
        Copy a host array of the same dtype and size in (waits for `stream`).
        """
    def copy_to_host(self, stream: typing.Any = None) -> numpy.ndarray[typing.Any, numpy.dtype[typing.Any]]:
        """
        A new NumPy array with the values (waits for `stream`, so queued work is included).
        """
    def data_ptr(self) -> int:
        """
        The device address as an int.
        """
    def zero_(self, stream: typing.Any = None) -> None:
        """
        Queue setting every byte to zero (capturable).
        """
    @property
    def __cuda_array_interface__(self) -> dict:
        ...
    @property
    def device(self) -> int:
        ...
    @property
    def dtype(self) -> str:
        ...
    @property
    def is_cuda(self) -> bool:
        ...
    @property
    def itemsize(self) -> int:
        ...
    @property
    def nbytes(self) -> int:
        ...
    @property
    def ndim(self) -> int:
        ...
    @property
    def shape(self) -> tuple:
        ...
    @property
    def size(self) -> int:
        ...
    @property
    def stream(self) -> int:
        """
        The default stream (cudaStream_t as int; 0 = legacy default) of this array's operations and of the scheduler steps that take it.
        """
    @stream.setter
    def stream(self, arg1: typing.Any) -> None:
        ...
def alphas_cumprod(betas: typing.Annotated[numpy.typing.ArrayLike, numpy.float64]) -> numpy.typing.NDArray[numpy.float64]:
    """
    Cumulative product of (1 - betas), float64 [T]; betas in [0, 1].
    """
def cuda_device_count() -> int:
    """
    Number of CUDA devices the runtime sees (0 without a driver).
    """
def cuda_device_name(index: typing.SupportsInt | typing.SupportsIndex = 0) -> str:
    ...
def cuda_device_properties(index: typing.SupportsInt | typing.SupportsIndex = 0) -> dict:
    """
    Name, compute capability ('M.m', major, minor), total memory (bytes) and SM count of a CUDA device; RuntimeError when it cannot be queried.
    """
def cuda_guide(out: typing.SupportsInt | typing.SupportsIndex, cond: typing.SupportsInt | typing.SupportsIndex, uncond: typing.SupportsInt | typing.SupportsIndex, n: typing.SupportsInt | typing.SupportsIndex, scale: typing.SupportsFloat | typing.SupportsIndex, stream: typing.Any = 0, device: typing.SupportsInt | typing.SupportsIndex = 0) -> None:
    """
    Classifier-free guidance on device float32 pointers: out = uncond + scale * (cond - uncond) for n values, in float32 as NumPy rounds it (asynchronous on `stream`).
    """
def cuda_randn(out: typing.SupportsInt | typing.SupportsIndex, n_cells: typing.SupportsInt | typing.SupportsIndex, n_genes: typing.SupportsInt | typing.SupportsIndex, seed: typing.SupportsInt | typing.SupportsIndex, step: typing.SupportsInt | typing.SupportsIndex, cell_offset: typing.SupportsInt | typing.SupportsIndex = 0, stream: typing.SupportsInt | typing.SupportsIndex = 0, device: typing.SupportsInt | typing.SupportsIndex = 0) -> None:
    """
    Fills device float32 [n_cells, n_genes] with the Philox normals, on `stream`.
    """
def cuda_randn_device_offset(out: typing.SupportsInt | typing.SupportsIndex, n_cells: typing.SupportsInt | typing.SupportsIndex, n_genes: typing.SupportsInt | typing.SupportsIndex, seed: typing.SupportsInt | typing.SupportsIndex, step: typing.SupportsInt | typing.SupportsIndex, cell_offset: typing.SupportsInt | typing.SupportsIndex, stream: typing.Any = 0, device: typing.SupportsInt | typing.SupportsIndex = 0) -> None:
    """
    As cuda_randn, with the cell offset read from device memory (an int64 at address `cell_offset`) when the kernel runs, so a captured CUDA graph draws each batch's noise.
    """
def cuda_sample_counts(mean: typing.SupportsInt | typing.SupportsIndex, theta: typing.SupportsInt | typing.SupportsIndex, out: typing.SupportsInt | typing.SupportsIndex, n_cells: typing.SupportsInt | typing.SupportsIndex, n_genes: typing.SupportsInt | typing.SupportsIndex, seed: typing.Any, cell_offset: typing.SupportsInt | typing.SupportsIndex = 0, zero_prob: typing.SupportsInt | typing.SupportsIndex = 0, stream: typing.Any = 0, device: typing.SupportsInt | typing.SupportsIndex = 0) -> None:
    """
    sample_counts on device pointers (ints): float32 [n_cells, n_genes] mean, float32 [n_genes] theta, int32 [n_cells, n_genes] out, float32 [n_cells, n_genes] zero_prob (0 = none), launched asynchronously on `stream` (an int cudaStream_t, a CudaStream or a torch stream). The same counts as the CPU; device values cannot be checked, so a value with invalid inputs is written as -1.
    """
def cuda_step(model_output: typing.SupportsInt | typing.SupportsIndex, sample: typing.SupportsInt | typing.SupportsIndex, out: typing.SupportsInt | typing.SupportsIndex, n_cells: typing.SupportsInt | typing.SupportsIndex, n_genes: typing.SupportsInt | typing.SupportsIndex, coefficients: StepCoefficients, *, prediction_type: str = 'epsilon', clip_sample: bool = False, clip_sample_range: typing.SupportsFloat | typing.SupportsIndex = 1.0, thresholding: bool = False, dynamic_thresholding_ratio: typing.SupportsFloat | typing.SupportsIndex = 0.995, sample_max_value: typing.SupportsFloat | typing.SupportsIndex = 1.0, use_clipped_model_output: bool = False, seed: typing.SupportsInt | typing.SupportsIndex = 0, step_index: typing.SupportsInt | typing.SupportsIndex = 0, cell_offset: typing.SupportsInt | typing.SupportsIndex = 0, truncate: bool = False, truncate_threshold: typing.SupportsFloat | typing.SupportsIndex = 0.0, history: typing.SupportsInt | typing.SupportsIndex = 0, noise: typing.SupportsInt | typing.SupportsIndex = 0, stream: typing.SupportsInt | typing.SupportsIndex = 0, device: typing.SupportsInt | typing.SupportsIndex = 0) -> None:
    """
    The fused step on raw device pointers (float32 C-contiguous [n_cells, n_genes]; 0 = none for history / noise), launched asynchronously on `stream` (a cudaStream_t as int).
    """
def ddim_coefficients(alpha_prod_t: typing.SupportsFloat | typing.SupportsIndex, alpha_prod_t_prev: typing.SupportsFloat | typing.SupportsIndex, eta: typing.SupportsFloat | typing.SupportsIndex = 0.0) -> StepCoefficients:
    """
    DDIM step coefficients (step.h).
    """
def ddpm_coefficients(alpha_prod_t: typing.SupportsFloat | typing.SupportsIndex, alpha_prod_t_prev: typing.SupportsFloat | typing.SupportsIndex, timestep: typing.SupportsInt | typing.SupportsIndex, variance_type: str = 'fixed_small') -> StepCoefficients:
    """
    DDPM step coefficients (step.h).
    """
def dpmsolver_coefficients(sigma_s1: typing.SupportsFloat | typing.SupportsIndex, sigma_s0: typing.SupportsFloat | typing.SupportsIndex, sigma_t: typing.SupportsFloat | typing.SupportsIndex, order: typing.SupportsInt | typing.SupportsIndex, solver_type: str = 'midpoint') -> StepCoefficients:
    """
    DPM-Solver++ step coefficients from diffusers-style sigmas (step.h).
    """
def dpmsolver_timesteps(num_train_timesteps: typing.SupportsInt | typing.SupportsIndex, num_inference_steps: typing.SupportsInt | typing.SupportsIndex, spacing: str = 'linspace', steps_offset: typing.SupportsInt | typing.SupportsIndex = 0) -> numpy.typing.NDArray[numpy.int64]:
    """
    Descending int64 timesteps as diffusers' DPMSolverMultistepScheduler.set_timesteps.
    """
def dynamic_threshold(abs_x0: typing.Annotated[numpy.typing.ArrayLike, numpy.float32], ratio: typing.SupportsFloat | typing.SupportsIndex, sample_max_value: typing.SupportsFloat | typing.SupportsIndex, method: str = 'select') -> float:
    """
    Dynamic thresholding's s of one cell from |x0| (float32 [G]): 'select' is the CPU kernel's algorithm, 'bisection' the CUDA kernel's.
    """
def get_num_threads() -> int:
    """
    Threads the OpenMP loops use (1 without OpenMP).
    """
def make_betas(beta_schedule: str, num_train_timesteps: typing.SupportsInt | typing.SupportsIndex, beta_start: typing.SupportsFloat | typing.SupportsIndex = 0.0001, beta_end: typing.SupportsFloat | typing.SupportsIndex = 0.02) -> numpy.typing.NDArray[numpy.float64]:
    """
    Betas (float64 [T]) of a named schedule, as diffusers defines them.
    """
def philox4x32_10(counter: typing.Annotated[collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex], "FixedSize(4)"], key: typing.Annotated[collections.abc.Sequence[typing.SupportsInt | typing.SupportsIndex], "FixedSize(2)"]) -> tuple[int, int, int, int]:
    """
    One Philox4x32-10 block: 4 uint32 from 4 + 2 uint32.
    """
def previous_timesteps(timesteps: typing.Any, num_train_timesteps: typing.SupportsInt | typing.SupportsIndex, bug_compatible: bool = False) -> numpy.typing.NDArray[numpy.int64]:
    """
    The previous timestep of each entry (-1 after the last), or diffusers' t - T // S.
    """
def randn(out: typing.Any, seed: typing.SupportsInt | typing.SupportsIndex, step: typing.SupportsInt | typing.SupportsIndex, cell_offset: typing.SupportsInt | typing.SupportsIndex = 0) -> None:
    """
    Fills float32 [n_cells, n_genes] `out` with the Philox normals of (seed, cell_offset + row, step, gene).
    """
def rescale_zero_terminal_snr(betas: typing.Annotated[numpy.typing.ArrayLike, numpy.float64]) -> numpy.typing.NDArray[numpy.float64]:
    """
    Betas rescaled to zero terminal SNR (Lin et al. 2023), float64 [T]; the last one is 1.
    """
def sample_counts(mean: typing.Any, theta: typing.Any, out: typing.Any, seed: typing.Any, cell_offset: typing.SupportsInt | typing.SupportsIndex = 0, zero_prob: typing.Any = None) -> None:
    """
    Fills int32 [n_cells, n_genes] `out` with negative-binomial counts of float32 [n_cells, n_genes] `mean` and per-gene dispersion float32 [n_genes] `theta` (+inf: Poisson), zero-inflated with probability float32 [n_cells, n_genes] `zero_prob` when given, keyed by (seed, cell_offset + row, gene) as counts.h describes.
    """
def set_num_threads(threads: typing.SupportsInt | typing.SupportsIndex) -> None:
    """
    Threads of the OpenMP loops (scheduler step, noise, counts); no effect without OpenMP.
    """
def step(model_output: typing.Any, sample: typing.Any, out: typing.Any, coefficients: StepCoefficients, *, prediction_type: str = 'epsilon', clip_sample: bool = False, clip_sample_range: typing.SupportsFloat | typing.SupportsIndex = 1.0, thresholding: bool = False, dynamic_thresholding_ratio: typing.SupportsFloat | typing.SupportsIndex = 0.995, sample_max_value: typing.SupportsFloat | typing.SupportsIndex = 1.0, use_clipped_model_output: bool = False, seed: typing.SupportsInt | typing.SupportsIndex = 0, step_index: typing.SupportsInt | typing.SupportsIndex = 0, cell_offset: typing.SupportsInt | typing.SupportsIndex = 0, truncate: bool = False, truncate_threshold: typing.SupportsFloat | typing.SupportsIndex = 0.0, history: typing.Any = None, noise: typing.Any = None) -> None:
    """
    One fused step on float32 C-contiguous [n_cells, n_genes] NumPy arrays, written to `out` (which may be `sample`). `history` (optional) is read where coefficients.d != 0 and then overwritten with x0; `noise` replaces the Philox noise (seed, cell_offset + row, step_index, gene) where coefficients.sigma != 0.
    """
def timesteps(num_train_timesteps: typing.SupportsInt | typing.SupportsIndex, num_inference_steps: typing.SupportsInt | typing.SupportsIndex, spacing: str = 'leading', steps_offset: typing.SupportsInt | typing.SupportsIndex = 0) -> numpy.typing.NDArray[numpy.int64]:
    """
    Descending int64 timesteps: 'leading', 'trailing', 'linspace' (as diffusers' DDIM/DDPM) or 'quadratic'.
    """
def validate_betas(betas: typing.Annotated[numpy.typing.ArrayLike, numpy.float64]) -> numpy.typing.NDArray[numpy.float64]:
    """
    Checks user-given betas lie in (0, 1) and returns them as float64.
    """
def validate_timesteps(timesteps: typing.Any, num_train_timesteps: typing.SupportsInt | typing.SupportsIndex) -> numpy.typing.NDArray[numpy.int64]:
    """
    Checks a user-given list (strictly descending, within [0, T)); returns it as int64.
    """
COUNT_STREAM_BIT: int = 2147483648
INITIAL_NOISE_STEP: int = 4294967295
cuda_compiled: bool = True
