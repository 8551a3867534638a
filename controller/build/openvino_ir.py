"""OpenVINO IR variants (fp32, and fp16-compressed weights), each packaged as one artifact.

Package format (`format: "openvino-ir-tar"` in the target's custom fields): an uncompressed POSIX tar
with exactly two regular files, `model.xml` and `model.bin`, in that order, mode 0644, mtime 0, owner 0,
so packing adds nothing variable (OpenVINO's own generated layer names do differ between two conversions
in one process, so rebuilt variants are not byte-identical). Uncompressed because weights
barely compress and a device can then stream-extract without a decompressor. `unpack_ir` is the strict
reader: any other member, link, path or size over the limit is refused.

fp16 compression halves the weights on disk and in transit; OpenVINO's CPU plugin decompresses them to
its inference precision at load, GPUs and NPUs run them natively.
"""

from __future__ import annotations

import io
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from controller.build.errors import VariantBuildError
from controller.build.evaluate import Runner

MEMBERS = ("model.xml", "model.bin")


def pack_ir(xml: bytes, weights: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in zip(MEMBERS, (xml, weights), strict=True):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def unpack_ir(package: bytes, *, max_member_bytes: int = 2 * 1024**3) -> tuple[bytes, bytes]:
    """(xml, weights) from a package made by `pack_ir`; refuses anything else."""
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(package), mode="r:") as tar:
            for member in tar.getmembers():
                if member.name not in MEMBERS or not member.isfile() or member.name in found:
                    raise ValueError(f"unexpected member {member.name!r} (type {member.type!r})")
                if member.size > max_member_bytes:
                    raise ValueError(f"member {member.name!r} is {member.size} bytes, over {max_member_bytes}")
                handle = tar.extractfile(member)
                if handle is None:
                    raise ValueError(f"member {member.name!r} cannot be read")
                found[member.name] = handle.read()
    except (tarfile.TarError, ValueError) as e:
        raise VariantBuildError("conversion_failed", f"not an OpenVINO IR package: {e}") from e
    if set(found) != set(MEMBERS):
        raise VariantBuildError("conversion_failed", f"OpenVINO IR package needs {MEMBERS}, has {sorted(found)}")
    return found["model.xml"], found["model.bin"]


def openvino_version() -> str | None:
    try:
        import openvino as ov
    except ImportError:
        return None
    # "2026.4.1-22982-e213a147257-releases/2026/4" -> "2026.4.1"
    return str(ov.get_version()).split("-", 1)[0]


def convert_ir(model_path: Path, *, compress_to_fp16: bool) -> bytes:
    """The ONNX file at `model_path` converted to OpenVINO IR and packaged."""
    try:
        import openvino as ov
    except ImportError as e:
        raise VariantBuildError("runtime_missing", "openvino is not installed on the build host") from e
    try:
        with tempfile.TemporaryDirectory(prefix="edgefleet-ov-") as tmp:
            xml_path = Path(tmp) / "model.xml"
            model = ov.convert_model(str(model_path))
            _keep_onnx_names(model, model_path)
            ov.save_model(model, str(xml_path), compress_to_fp16=compress_to_fp16)
            return pack_ir(xml_path.read_bytes(), xml_path.with_suffix(".bin").read_bytes())
    except Exception as e:  # openvino raises RuntimeError and its own OpConversionFailure types
        raise VariantBuildError("conversion_failed", f"OpenVINO conversion failed: {str(e)[:500]}") from e


def _keep_onnx_names(model: object, model_path: Path) -> None:
    """Give each input and output only its ONNX name.

    The converter may merge a folded node's name into a port ({'cast_input', 'input'}); a loader that
    reads "any" name would then serve the variant under a name the ONNX model's clients do not send.
    """
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    onnx_names = {v.name for v in graph.input if v.name not in initializers} | {v.name for v in graph.output}
    for port in [*model.inputs, *model.outputs]:  # type: ignore[attr-defined]
        names = port.get_names()
        original = [n for n in names if n in onnx_names]
        if len(names) > 1 and len(original) == 1:
            port.get_tensor().set_names({original[0]})


def openvino_runner(package: bytes, *, threads: int) -> Runner:
    """A CPU OpenVINO compiled model over a packaged IR, read from memory."""
    import openvino as ov

    xml, weights = unpack_ir(package)
    core = ov.Core()
    core.set_property("CPU", {"INFERENCE_NUM_THREADS": threads})
    model = core.read_model(xml.decode("utf-8"), ov.Tensor(np.frombuffer(weights, dtype=np.uint8).copy()))
    compiled = core.compile_model(model, "CPU")
    request = compiled.create_infer_request()

    def run(batch: np.ndarray) -> np.ndarray:
        result = request.infer({0: batch})
        return np.asarray(result[compiled.outputs[0]]).copy()

    return run
