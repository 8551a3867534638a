"""TensorRT engine building and caching with a fake builder (runs everywhere), and the real backend
where TensorRT and an NVIDIA GPU exist."""

from __future__ import annotations

import importlib.util
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from agent.runtime import ModelLoadError, RuntimeOptions, RuntimeUnavailableError, Session, loader_for
from agent.runtime.tensorrt import TensorRTLoader
from agent.runtime.tensorrt_cache import DeviceInfo, EngineCache
from controller.sample_models import SampleModel


class FakeBuilder:
    """'Builds' an engine that records its inputs; 'runs' it by loading the ONNX file in ONNX Runtime."""

    def __init__(self, info: DeviceInfo | None = None, fail: bool = False, build_s: float = 0.0) -> None:
        self.info = info or DeviceInfo("10.3.0", "NVIDIA Orin", "8.7")
        self.fail = fail
        self.build_s = build_s
        self.builds: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def device_info(self) -> DeviceInfo:
        return self.info

    def build(self, onnx_path: Path, precision: str) -> bytes:
        if self.fail:
            raise ModelLoadError(f"{onnx_path}: TensorRT cannot parse the model: unsupported op")
        time.sleep(self.build_s)
        with self.lock:
            self.builds.append((onnx_path.name, precision))
        return json.dumps({"onnx": str(onnx_path), "precision": precision, "gpu": self.info.gpu_name}).encode()

    def load(self, engine_path: Path) -> Session:
        plan = json.loads(engine_path.read_text())
        return loader_for("onnxruntime").load(Path(plan["onnx"]), RuntimeOptions(intra_op_threads=1))


def options(tmp: Path, precision: str = "fp16") -> RuntimeOptions:
    return RuntimeOptions(device="cuda:0", cache_dir=tmp / "engines", extra={"precision": precision})


def test_first_load_builds_then_the_cache_serves(digits_mlp: SampleModel, tmp_path: Path) -> None:
    builder = FakeBuilder()
    loader = TensorRTLoader(builder)
    session = loader.load(digits_mlp.path, options(tmp_path))
    assert builder.builds == [("model.onnx", "fp16")] and loader.last_build_was_cached is False
    out = session.run({digits_mlp.input_name: digits_mlp.golden.inputs})
    assert np.mean(np.argmax(out[digits_mlp.output_name], axis=1) == digits_mlp.golden.labels) == pytest.approx(
        digits_mlp.accuracy)
    loader.load(digits_mlp.path, options(tmp_path))
    assert len(builder.builds) == 1 and loader.last_build_was_cached is True


def test_key_covers_model_precision_version_and_gpu(digits_mlp: SampleModel, digits_cnn: SampleModel,
                                                   tmp_path: Path) -> None:
    builder = FakeBuilder()
    TensorRTLoader(builder).load(digits_mlp.path, options(tmp_path))
    TensorRTLoader(builder).load(digits_mlp.path, options(tmp_path, "int8"))
    TensorRTLoader(builder).load(digits_cnn.path, options(tmp_path))
    upgraded = FakeBuilder(DeviceInfo("10.4.0", "NVIDIA Orin", "8.7"))
    TensorRTLoader(upgraded).load(digits_mlp.path, options(tmp_path))
    other_gpu = FakeBuilder(DeviceInfo("10.3.0", "NVIDIA GeForce RTX 4090", "8.9"))
    TensorRTLoader(other_gpu).load(digits_mlp.path, options(tmp_path))
    assert len(builder.builds) == 3 and len(upgraded.builds) == 1 and len(other_gpu.builds) == 1
    assert len(list((tmp_path / "engines").glob("*.engine"))) == 5


def test_corrupted_engine_is_rebuilt_and_failures_cache_nothing(digits_mlp: SampleModel, tmp_path: Path) -> None:
    builder = FakeBuilder()
    TensorRTLoader(builder).load(digits_mlp.path, options(tmp_path))
    (engine,) = (tmp_path / "engines").glob("*.engine")
    engine.write_bytes(b"truncated")
    TensorRTLoader(builder).load(digits_mlp.path, options(tmp_path))
    assert len(builder.builds) == 2
    other = tmp_path / "other.onnx"
    shutil.copy(digits_mlp.path, other)
    other.write_bytes(other.read_bytes() + b"\x00")
    with pytest.raises(ModelLoadError, match="unsupported op"):
        TensorRTLoader(FakeBuilder(fail=True)).load(other, options(tmp_path))
    assert len(list((tmp_path / "engines").glob("*.engine"))) == 1


def test_concurrent_loads_build_once(digits_mlp: SampleModel, tmp_path: Path) -> None:
    builder = FakeBuilder(build_s=0.3)
    threads = [threading.Thread(target=TensorRTLoader(builder).load, args=(digits_mlp.path, options(tmp_path)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert builder.builds == [("model.onnx", "fp16")]


def test_cache_prunes_least_recently_used(digits_mlp: SampleModel, tmp_path: Path) -> None:
    cache = EngineCache(tmp_path / "engines", max_entries=2)
    for version in ("10.0.0", "10.1.0", "10.2.0"):
        cache.get_or_build(digits_mlp.path, FakeBuilder(DeviceInfo(version, "gpu", "8.7")), "fp16")
        time.sleep(0.01)
    assert len(cache.entries()) == 2
    assert cache.lookup(cache.key_for(digits_mlp.path, DeviceInfo("10.0.0", "gpu", "8.7"), "fp16")) is None


HAVE_TRT = importlib.util.find_spec("tensorrt") is not None and shutil.which("nvidia-smi") is not None


def test_loader_for_tensorrt_names_the_missing_package() -> None:
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    with pytest.raises(RuntimeUnavailableError, match="tensorrt"):
        loader_for("tensorrt")


@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_TRT, reason="needs tensorrt and an NVIDIA GPU")
def test_real_tensorrt_engine_matches_onnxruntime(digits_mlp: SampleModel, tmp_path: Path) -> None:
    loader = loader_for("tensorrt")
    session = loader.load(digits_mlp.path, options(tmp_path, "fp32"))
    out = session.run({digits_mlp.input_name: digits_mlp.golden.inputs[:16]})
    scores = next(iter(out.values()))
    assert np.allclose(scores, digits_mlp.golden.reference_outputs[:16], atol=1e-3)
    again = loader_for("tensorrt")
    again.load(digits_mlp.path, options(tmp_path, "fp32"))
    assert getattr(again, "last_build_was_cached", None) is True


def test_signed_build_settings_reach_the_loader() -> None:
    from agent.staging.packages import runtime_extra

    custom = {"runtime": "tensorrt", "precision": "fp16", "trt_precision": "fp16", "trt_min_batch": 1,
              "trt_opt_batch": 8, "trt_max_batch": 16, "trt_workspace_mb": 512, "trt_input_shape": [3, 224, 224]}
    assert runtime_extra(custom) == {"precision": "fp16", "min_batch": "1", "opt_batch": "8", "max_batch": "16",
                                     "workspace_mb": "512"}
    assert runtime_extra({"runtime": "onnxruntime", "precision": "int8"}) == {}
    from agent.runtime.tensorrt import TensorRTBuilder

    builder = TensorRTBuilder(min_batch=1, opt_batch=8, max_batch=16, workspace_bytes=512 << 20)
    assert (builder.min_batch, builder.opt_batch, builder.max_batch) == (1, 8, 16)
    with pytest.raises(ValueError, match="batch profile"):
        TensorRTBuilder(min_batch=8, opt_batch=4, max_batch=16)
