"""The GPU engines: the torch-free CUDA runtime, TensorRT and onnxruntime-CUDA backends.

Tests marked ``gpu`` need a CUDA device (and TensorRT or onnxruntime-gpu where named) and are
skipped elsewhere; the others check, on any machine, that the GPU paths fail clearly without a
GPU, write nothing then, and that their pure-Python logic (engine keys, which TensorRT layers stay
fp32, what a CUDA graph bakes in) is right.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cellsynth import _core
from cellsynth.bundle.exports import tensorrt_key
from cellsynth.errors import BundleError, MissingDependencyError

SKIP_REASON = "needs a CUDA device (and TensorRT / onnxruntime-gpu where named)"


def _cuda_devices() -> int:
    try:
        return int(_core.cuda_device_count()) if _core.cuda_compiled else 0
    except Exception:  # noqa: BLE001
        return 0


def _has(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _ort_cuda() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


HAS_CUDA = _cuda_devices() > 0
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason=SKIP_REASON)
needs_trt = pytest.mark.skipif(not (HAS_CUDA and _has("tensorrt")), reason=SKIP_REASON)
needs_ort_cuda = pytest.mark.skipif(not (HAS_CUDA and _ort_cuda()), reason=SKIP_REASON)


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    """A private copy of the tiny bundle (tests may write exports into it)."""
    src = Path(getattr(tiny_bundle, "path", tiny_bundle))
    dst = tmp_path / "bundle"
    shutil.copytree(src, dst)
    return dst


@pytest.fixture
def no_gpu(monkeypatch):
    """Pretend this machine has no CUDA device (whatever it has)."""
    monkeypatch.setattr(_core, "cuda_device_count", lambda: 0)


# ------------------------------------------------------------------ without a GPU (run anywhere)


def test_build_engine_without_gpu_raises_and_writes_nothing(bundle_copy, no_gpu):
    from cellsynth.backends.tensorrt_build import build_engine

    before = _snapshot(bundle_copy)
    with pytest.raises(MissingDependencyError) as err:
        build_engine(bundle_copy, precision="fp16")
    msg = str(err.value)
    assert "TensorRT engines need an NVIDIA GPU" in msg
    assert "pip install 'cellsynth[gpu]'" in msg
    assert "no CUDA device" in msg or "built without CUDA" in msg
    assert _snapshot(bundle_copy) == before


def test_build_engine_without_tensorrt_raises_and_writes_nothing(bundle_copy, monkeypatch):
    import sys

    from cellsynth.backends.tensorrt_build import build_engine

    monkeypatch.setattr(_core, "cuda_compiled", True, raising=False)
    monkeypatch.setattr(_core, "cuda_device_count", lambda: 1)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    before = _snapshot(bundle_copy)
    with pytest.raises(MissingDependencyError, match="tensorrt package is not installed"):
        build_engine(bundle_copy)
    assert _snapshot(bundle_copy) == before


def test_build_engine_checks_options_first(bundle_copy):
    from cellsynth.backends.tensorrt_build import build_engine

    with pytest.raises(ValueError, match="precision"):
        build_engine(bundle_copy, precision="int4")
    with pytest.raises(ValueError, match="min_batch <= opt_batch <= max_batch"):
        build_engine(bundle_copy, min_batch=8, opt_batch=4, max_batch=16)


def test_find_engine_without_gpu_raises(bundle_copy, no_gpu):
    from cellsynth.backends.tensorrt_build import find_engine

    with pytest.raises(MissingDependencyError, match="no CUDA device"):
        find_engine(bundle_copy, "fp16")


def test_tensorrt_denoiser_without_gpu_raises(bundle_copy, no_gpu):
    from cellsynth.backends.tensorrt_backend import TensorRTDenoiser

    before = _snapshot(bundle_copy)
    with pytest.raises(MissingDependencyError, match="TensorRT engines need an NVIDIA GPU"):
        TensorRTDenoiser(bundle_copy)
    assert _snapshot(bundle_copy) == before


def test_onnxruntime_cuda_denoiser_without_gpu_raises(bundle_copy, no_gpu):
    from cellsynth.backends.onnxruntime_cuda_backend import OnnxRuntimeCudaDenoiser

    with pytest.raises(MissingDependencyError, match="onnxruntime on CUDA needs an NVIDIA GPU"):
        OnnxRuntimeCudaDenoiser(bundle_copy)


@pytest.mark.skipif(HAS_CUDA, reason="checks the error of machines without a CUDA device")
def test_device_memory_without_gpu_raises_clearly():
    for make in (lambda: _core.DeviceArray((2, 3)), lambda: _core.CudaStream()):
        with pytest.raises(RuntimeError, match="CUDA"):
            make()


@pytest.mark.parametrize(
    "gpu, cc, trt, precision, expected",
    [
        (
            "NVIDIA H100 80GB HBM3",
            "9.0",
            "10.3.0",
            "fp16",
            "nvidia-h100-80gb-hbm3_sm90_trt10.3.0_fp16",
        ),
        (
            "NVIDIA GeForce RTX 4090",
            "8.9",
            "10.0.1.6",
            "fp32",
            "nvidia-geforce-rtx-4090_sm89_trt10.0.1.6_fp32",
        ),
        ("  Tesla T4 / (PCIe)  ", "7.5", "10.1.0", "bf16", "tesla-t4-pcie_sm75_trt10.1.0_bf16"),
    ],
)
def test_tensorrt_key_sanitises_names(gpu, cc, trt, precision, expected):
    key = tensorrt_key(gpu, cc, trt, precision)
    assert key == expected
    assert all(c.isalnum() or c in "._-" for c in key)  # a safe file name


class _FakeTensor:
    def __init__(self, name, dtype, shape_tensor=False):
        self.name, self.dtype, self.is_shape_tensor = name, dtype, shape_tensor


class _FakeLayer:
    def __init__(self, name, inputs, outputs):
        self.name, self._in, self._out = name, inputs, outputs
        self.precision = None
        self.output_types = {}

    num_inputs = property(lambda self: len(self._in))
    num_outputs = property(lambda self: len(self._out))

    def get_input(self, i):
        return self._in[i]

    def get_output(self, i):
        return self._out[i]

    def set_output_type(self, i, dtype):
        self.output_types[i] = dtype


class _FakeNetwork:
    def __init__(self, inputs, layers):
        self._inputs, self._layers = inputs, layers

    num_inputs = property(lambda self: len(self._inputs))
    num_layers = property(lambda self: len(self._layers))

    def get_input(self, i):
        return self._inputs[i]

    def get_layer(self, i):
        return self._layers[i]


class _FakeTrt:
    float32, float16, int64, int32 = "f32", "f16", "i64", "i32"


def test_timestep_embedding_layers_stay_fp32():
    from cellsynth.backends.tensorrt_build import keep_timestep_embedding_fp32

    f32, i64 = _FakeTrt.float32, _FakeTrt.int64
    x, t, lab = _FakeTensor("x_t", f32), _FakeTensor("timestep", i64), _FakeTensor("labels", i64)
    const = _FakeTensor("freqs", f32)
    tf, arg, emb, h = (_FakeTensor(n, f32) for n in ("tf", "arg", "emb", "h"))
    y, c, tok, out, shp = (_FakeTensor(n, f32) for n in ("y", "c", "tok", "out", "shp"))
    layers = [
        _FakeLayer("node_Constant_0", [], [const]),
        _FakeLayer("node_Cast_1", [t], [tf]),  # int -> float: depends on timestep only
        _FakeLayer("node_Mul_2", [tf, const], [arg]),
        _FakeLayer("node_Sin_3", [arg], [emb]),
        _FakeLayer("node_Gemm_4", [emb], [h]),
        _FakeLayer("/y_embedder/Gather", [lab], [y]),
        _FakeLayer("node_Add_5", [h, y], [c]),  # time + label embedding: not only timestep
        _FakeLayer("/x_embedder/Conv", [x], [tok]),
        _FakeLayer("node_Shape_6", [t], [_FakeTensor("n", i64, shape_tensor=True)]),
        _FakeLayer("/t_embedder/extra", [tok, c], [shp]),  # named: kept whatever it reads
        _FakeLayer("node_Out", [tok, c], [out]),
    ]
    kept = keep_timestep_embedding_fp32(_FakeNetwork([x, t, lab], layers), _FakeTrt)
    assert kept == [
        "node_Cast_1",
        "node_Mul_2",
        "node_Sin_3",
        "node_Gemm_4",
        "/t_embedder/extra",
    ]
    by_name = {layer.name: layer for layer in layers}
    for name in kept:
        assert by_name[name].precision == f32
        assert by_name[name].output_types == {0: f32}
    for name in ("node_Add_5", "/x_embedder/Conv", "node_Shape_6", "node_Out", "node_Constant_0"):
        assert by_name[name].precision is None


def test_graph_noise_mode_and_key():
    from cellsynth.backends.tensorrt_graphs import graph_key as _graph_key
    from cellsynth.backends.tensorrt_graphs import noise_mode as _noise_mode
    from cellsynth.scheduler import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    ddim = DDIMScheduler(seed=3)
    assert _noise_mode(ddim, {"eta": 0.0}) == "none"
    assert _noise_mode(ddim, {"eta": 0.5}) == "device"
    assert _noise_mode(DDPMScheduler(), {}) == "device"
    assert _noise_mode(DPMSolverMultistepScheduler(), {}) == "none"
    assert _noise_mode(object(), {}) is None  # unknown schedulers never run as graphs

    ddim.set_timesteps(10)
    ts = [int(t) for t in ddim.timesteps]
    base = _graph_key(ddim, 64, True, 2.0, ts, {"eta": 0.5}, "device")
    assert base == _graph_key(ddim, 64, True, 2.0, ts, {"eta": 0.5}, "device")
    assert base != _graph_key(ddim, 32, True, 2.0, ts, {"eta": 0.5}, "device")
    assert base != _graph_key(ddim, 64, True, 3.0, ts, {"eta": 0.5}, "device")
    assert base != _graph_key(ddim, 64, True, 2.0, ts[1:], {"eta": 0.5}, "device")
    assert base != _graph_key(ddim, 64, True, 2.0, ts, {"eta": 1.0}, "device")
    assert base != _graph_key(DDIMScheduler(seed=4), 64, True, 2.0, ts, {"eta": 0.5}, "device")


class _FakeDeviceArray:
    """Quacks like _core.DeviceArray without device memory (validation happens first)."""

    is_cuda = True
    dtype = "float32"
    device = 0
    stream = 0

    def __init__(self, shape, ptr):
        self.shape, self._ptr = shape, ptr

    def data_ptr(self):
        return self._ptr


def test_run_step_validates_device_arrays_before_launching():
    from cellsynth.scheduler import arrays

    k = _core.ddim_coefficients(0.5, 0.6, 0.0)
    opts = {}
    x = _FakeDeviceArray((4, 8), 1 << 20)
    m = _FakeDeviceArray((4, 8), 2 << 20)
    assert arrays.is_device_array(x) and not arrays.is_device_array(np.zeros((4, 8)))
    if not _core.cuda_compiled:
        pytest.skip("device arrays need a CUDA build")
    with pytest.raises(ValueError, match="shape"):
        arrays.run_step(k, _FakeDeviceArray((4, 9), 2 << 20), x, out=x, options=opts)
    with pytest.raises(ValueError, match="overlap"):
        arrays.run_step(k, m, x, out=_FakeDeviceArray((4, 8), (1 << 20) + 64), options=opts)
    with pytest.raises(TypeError, match="CUDA device array"):
        arrays.run_step(k, np.zeros((4, 8), np.float32), x, out=x, options=opts)
    assert not arrays.same_kind(x, np.zeros((4, 8), np.float32))
    assert arrays.same_kind(x, m)


# --------------------------------------------------------------------- the CUDA runtime (GPU)


@pytest.mark.gpu
@needs_cuda
def test_device_array_round_trip():
    stream = _core.CudaStream(0)
    rng = np.random.default_rng(0)
    host = rng.standard_normal((5, 7)).astype(np.float32)
    a = _core.DeviceArray(host.shape, "float32", 0, stream=stream)
    assert (a.shape, a.dtype, a.nbytes, a.device, a.is_cuda) == ((5, 7), "float32", 140, 0, True)
    assert a.stream == stream.handle and a.data_ptr() != 0
    a.copy_from_host(host)
    np.testing.assert_array_equal(a.copy_to_host(), host)
    codes = np.arange(12, dtype=np.int64).reshape(3, 4)
    c = _core.DeviceArray((3, 4), "int64")
    c.copy_from_host(codes)
    np.testing.assert_array_equal(c.copy_to_host(), codes)
    twice = _core.DeviceArray((10, 7), "float32", stream=stream)  # [a; a] by offsets
    twice.copy_from_device(a)
    twice.copy_from_device(a, dst_offset_bytes=a.nbytes)
    np.testing.assert_array_equal(twice.copy_to_host(), np.concatenate([host, host]))
    twice.zero_()
    assert not twice.copy_to_host().any()
    with pytest.raises(TypeError, match="dtype"):
        a.copy_from_host(host.astype(np.float64))
    with pytest.raises(ValueError, match="shape"):
        a.copy_from_host(host[:4])
    with pytest.raises(ValueError, match="exceeds"):
        a.copy_from_device(twice)
    stream.synchronize()


@pytest.mark.gpu
@needs_cuda
def test_cuda_guide_matches_numpy():
    rng = np.random.default_rng(1)
    cond, uncond = (rng.standard_normal((33, 50)).astype(np.float32) for _ in range(2))
    out = np.empty((33, 50), np.float32)
    both = _core.DeviceArray((66, 50))
    both.copy_from_host(np.concatenate([cond, uncond]))
    g = _core.DeviceArray((33, 50))
    for scale in (1.0, 2.5, -0.3):
        _core.cuda_guide(
            g.data_ptr(), both.data_ptr(), both.data_ptr() + cond.nbytes, g.size, scale
        )
        out = g.copy_to_host()
        expected = uncond + np.float32(scale) * (cond - uncond)
        np.testing.assert_array_equal(out, expected)


@pytest.mark.gpu
@needs_cuda
def test_randn_device_offset_matches_cpu_noise():
    out = _core.DeviceArray((9, 13))
    off = _core.DeviceArray((1,), "int64")
    for offset in (0, 5, 2**33 + 7):
        off.copy_from_host(np.array([offset], np.int64))
        _core.cuda_randn_device_offset(out.data_ptr(), 9, 13, 42, 3, off.data_ptr())
        ref = np.empty((9, 13), np.float32)
        _core.randn(ref, 42, 3, offset)
        np.testing.assert_array_equal(out.copy_to_host(), ref)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("name, kw", [("ddim", {"eta": 0.7}), ("ddpm", {}), ("dpmsolver++", {})])
def test_scheduler_steps_device_arrays_like_numpy(name, kw):
    from cellsynth.scheduler import SCHEDULERS

    stream = _core.CudaStream(0)
    results = []
    for on_device in (False, True):
        sched = SCHEDULERS[name](seed=7)
        sched.set_timesteps(8)
        x = sched.init_noise(6, 20, cell_offset=10)
        if on_device:
            like = _core.DeviceArray((6, 20), stream=stream)
            xd = sched.init_noise_like(like, cell_offset=10)
            np.testing.assert_array_equal(xd.copy_to_host(), x)
            x = xd
        for t in sched.timesteps:
            rng = np.random.default_rng(int(t))  # the same model outputs in both runs
            m = np.tanh(rng.standard_normal((6, 20))).astype(np.float32)
            if on_device:
                md = _core.DeviceArray((6, 20), stream=stream)
                md.copy_from_host(m)
                m = md
            x = sched.step(m, t, x, cell_offset=10, out=x, **kw)
        results.append(x.copy_to_host() if on_device else x)
    np.testing.assert_allclose(results[1], results[0], rtol=1e-6, atol=1e-6)


@pytest.mark.gpu
@needs_cuda
def test_cuda_graph_replays_captured_work():
    stream = _core.CudaStream(0)
    a, b, zero = (_core.DeviceArray((4, 8), stream=stream) for _ in range(3))
    host = np.arange(32, dtype=np.float32).reshape(4, 8)
    a.copy_from_host(host)
    zero.zero_()
    _core.CudaGraph.begin_capture(stream)
    assert _core.CudaGraph.is_capturing(stream)
    with pytest.raises(RuntimeError, match="captured"):
        _core.DeviceArray((1,))  # no allocation during a capture
    b.copy_from_device(a)
    # a <- zero + 2 * (b - zero) = 2a
    _core.cuda_guide(a.data_ptr(), b.data_ptr(), zero.data_ptr(), a.size, 2.0, stream=stream)
    graph = _core.CudaGraph.end_capture(stream)
    assert not _core.CudaGraph.is_capturing(stream)
    assert graph.num_nodes >= 2
    np.testing.assert_array_equal(a.copy_to_host(), host)  # captured, not run
    graph.launch(stream)
    graph.launch(stream)
    np.testing.assert_array_equal(a.copy_to_host(), 4 * host)  # a <- 2a, twice


# --------------------------------------------------------------------- TensorRT / ORT (GPU)


@pytest.fixture(scope="module")
def onnx_bundle(tiny_bundle, tmp_path_factory):
    """A copy of the tiny bundle with its fp32 ONNX export."""
    try:
        from cellsynth.export.onnx import export_onnx
    except ImportError as exc:
        pytest.skip(f"cellsynth.export.onnx is not available: {exc}")
    dst = tmp_path_factory.mktemp("gpu") / "bundle"
    shutil.copytree(Path(getattr(tiny_bundle, "path", tiny_bundle)), dst)
    export_onnx(dst, precision="fp32", progress=False)
    return dst


def _inputs(bundle, n, seed=0):
    from cellsynth.bundle.load import load_bundle

    b = load_bundle(bundle)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, len(b.genes))).astype(np.float32)
    t = rng.integers(0, b.schedule.num_train_timesteps, n).astype(np.int64)
    labels = np.stack([rng.integers(0, s, n) for s in b.model_label_sizes], axis=1).astype(np.int64)
    return b, x, t, labels


def _onnx_cpu(bundle, x, t, labels):
    import onnxruntime as ort

    from cellsynth.bundle.exports import export_path

    session = ort.InferenceSession(
        str(export_path(bundle, "onnx", "fp32")), providers=["CPUExecutionProvider"]
    )
    return session.run(None, {"x_t": x, "timestep": t, "labels": labels})[0]


def _cpu_denoiser(bundle):
    from cellsynth.backends.onnxruntime_backend import OnnxRuntimeDenoiser

    return OnnxRuntimeDenoiser(bundle, precision="fp32")


def _denoise(den, bundle, name, n, offset, guidance=2.0, steps=10, **kw):
    from cellsynth.scheduler import SCHEDULERS

    b, _, _, labels = _inputs(bundle, n, seed=offset)
    sched = SCHEDULERS[name](seed=11, truncate_final=True)
    sched.set_timesteps(steps)
    x_T = sched.init_noise(n, len(b.genes), cell_offset=offset)
    null = np.tile(np.asarray(b.model_label_sizes, np.int64), (n, 1))  # the null code of each label
    return den.denoise(sched, x_T, labels, null, guidance, offset, kw)


def _trt(bundle, precision, **kw):
    from cellsynth.backends.tensorrt_backend import TensorRTDenoiser

    opts = dict(min_batch=1, opt_batch=64, max_batch=256, workspace_gib=1)
    return TensorRTDenoiser(bundle, precision=precision, progress=False, build_options=opts, **kw)


@pytest.mark.gpu
@needs_trt
def test_tensorrt_fp32_engine_matches_onnx_cpu(onnx_bundle):
    den = _trt(onnx_bundle, "fp32", cuda_graph=False)
    b, x, t, labels = _inputs(onnx_bundle, 37)
    out = den.to_host(den(den.to_native(x), den.to_native(t), den.to_native(labels)))
    ref = _onnx_cpu(b, x, t, labels)
    np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())


@pytest.mark.gpu
@needs_trt
def test_tensorrt_fp16_trajectory_fidelity(onnx_bundle):
    from cellsynth.bundle.exports import read_exports

    den = _trt(onnx_bundle, "fp16")
    entries = [
        e for e in read_exports(onnx_bundle)["tensorrt"].values() if e["precision"] == "fp16"
    ]
    assert entries and entries[0]["fp32_layers"] > 0  # the timestep embedding stayed fp32
    ref = _denoise(_cpu_denoiser(onnx_bundle), onnx_bundle, "ddim", 64, 0, steps=20)
    got = _denoise(den, onnx_bundle, "ddim", 64, 0, steps=20)
    rel = np.sqrt(np.mean((got - ref) ** 2)) / np.sqrt(np.mean(ref**2))
    assert rel < 0.05, rel
    assert np.corrcoef(got.mean(0), ref.mean(0))[0, 1] > 0.99


@pytest.mark.gpu
@needs_trt
@pytest.mark.parametrize(
    "name, kw, guidance",
    [
        ("ddim", {"eta": 0.0}, 2.0),
        ("ddim", {"eta": 1.0}, 2.0),  # per-step noise keyed by the batch's cell offset
        ("ddpm", {}, 1.0),
        ("dpmsolver++", {}, 1.5),  # the x0 history on the device
    ],
)
def test_graph_denoise_equals_plain_loop(onnx_bundle, name, kw, guidance):
    plain = _trt(onnx_bundle, "fp32", cuda_graph=False)
    graph = _trt(onnx_bundle, "fp32", cuda_graph=True, graph_warmup=0)
    for offset in (0, 48, 96):  # one capture, then replays with other offsets
        want = _denoise(plain, onnx_bundle, name, 48, offset, guidance, **kw)
        got = _denoise(graph, onnx_bundle, name, 48, offset, guidance, **kw)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert graph.graph_captures == 1 and graph.graph_launches == 3
    # and the plain TensorRT loop matches the generic Denoiser loop through __call__/twice/guide
    from cellsynth.backends.base import Denoiser

    generic = _denoise_generic(plain, onnx_bundle, name, 48, 0, guidance, Denoiser, **kw)
    np.testing.assert_allclose(
        generic, _denoise(plain, onnx_bundle, name, 48, 0, guidance, **kw), rtol=1e-5, atol=1e-5
    )


def _denoise_generic(den, bundle, name, n, offset, guidance, base, **kw):
    from cellsynth.scheduler import SCHEDULERS

    b, _, _, labels = _inputs(bundle, n, seed=offset)
    sched = SCHEDULERS[name](seed=11, truncate_final=True)
    sched.set_timesteps(10)
    x_T = sched.init_noise(n, len(b.genes), cell_offset=offset)
    null = np.tile(np.asarray(b.model_label_sizes, np.int64), (n, 1))
    return base.denoise(den, sched, x_T, labels, null, guidance, offset, kw)


@pytest.mark.gpu
@needs_trt
def test_engine_key_and_rebuild_on_mismatch(onnx_bundle, capsys):
    from cellsynth.backends.tensorrt_backend import TensorRTDenoiser
    from cellsynth.backends.tensorrt_build import engine_key, find_engine, require_tensorrt

    _trt(onnx_bundle, "fp32")  # builds it if no earlier test did
    trt, props = require_tensorrt(0)
    key = engine_key(props, trt.__version__, "fp32")
    path = find_engine(onnx_bundle, "fp32")
    assert path is not None and path.name == f"{key}.plan"
    assert (Path(onnx_bundle) / "tensorrt" / "timing.cache").is_file()
    manifest_file = Path(onnx_bundle) / "exports.json"
    manifest = json.loads(manifest_file.read_text())
    entry = manifest["tensorrt"][key]
    assert entry["gpu"] == props["name"] and entry["tensorrt_version"] == trt.__version__
    assert entry["profile"]["max_batch"] == 256 and entry["build_seconds"] >= 0
    entry["tensorrt_version"] = "0.0.0"  # as if built by another TensorRT
    manifest_file.write_text(json.dumps(manifest))
    assert find_engine(onnx_bundle, "fp32") is None
    with pytest.raises(BundleError, match="no TensorRT fp32 engine"):
        TensorRTDenoiser(onnx_bundle, precision="fp32", build=False)
    capsys.readouterr()
    _trt(onnx_bundle, "fp32")  # rebuilds, and says so
    assert "building one" in capsys.readouterr().err
    assert find_engine(onnx_bundle, "fp32") is not None


@pytest.mark.gpu
@needs_ort_cuda
def test_onnxruntime_cuda_matches_cpu(onnx_bundle):
    from cellsynth.backends.onnxruntime_cuda_backend import OnnxRuntimeCudaDenoiser

    den = OnnxRuntimeCudaDenoiser(onnx_bundle)
    b, x, t, labels = _inputs(onnx_bundle, 29)
    out = den.to_host(den(den.to_native(x), den.to_native(t), den.to_native(labels)))
    ref = _onnx_cpu(b, x, t, labels)
    np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())
    got = _denoise(den, onnx_bundle, "ddim", 32, 5, eta=0.5)
    want = _denoise(_cpu_denoiser(onnx_bundle), onnx_bundle, "ddim", 32, 5, eta=0.5)
    rel = np.sqrt(np.mean((got - want) ** 2)) / np.sqrt(np.mean(want**2))
    assert rel < 5e-3, rel
