"""The bottom layer stays at the bottom: it imports nothing else of the repository, and the names the packages
above re-export are the same objects."""
from __future__ import annotations

import ast
from pathlib import Path

import inspection_core
from inspection_core.errors import TilingError
from inspection_core.hashing import file_sha256, text_sha256

ABOVE = {"inspection", "station", "engines", "calibration", "ui"}
ALLOWED_THIRD_PARTY = {"numpy", "cv2"}


def test_inspection_core_imports_only_numpy_cv2_and_the_standard_library():
    import sys

    for path in Path(inspection_core.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                roots = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = [(node.module or "").split(".")[0]]
            else:
                continue
            for root in roots:
                assert root not in ABOVE, f"{path.name} imports {root}"
                assert root in ALLOWED_THIRD_PARTY or root == "inspection_core" or root in sys.stdlib_module_names \
                    or root == "__future__", f"{path.name} imports {root}"


def test_station_errors_tiling_error_is_the_bottom_layers():
    from station.errors import TilingError as StationTilingError

    assert StationTilingError is TilingError


def test_engine_protocol_is_shared_by_every_backend():
    from engines.backends.onnxruntime_backend import OnnxRuntimeEngine
    from engines.backends.tensorrt_backend import TensorRTEngine
    from engines.backends.torch_backend import TorchEngine
    from inspection_core.engine import Engine

    assert all(issubclass(cls, Engine) for cls in (OnnxRuntimeEngine, TorchEngine, TensorRTEngine))


def test_file_and_text_hashes(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"hello")
    assert file_sha256(path) == text_sha256("hello") == \
        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"

