"""groupnorm inside OpenVINO: the path of the extension library.

The extension (``libgroupnorm_openvino.so``, built with ``-DGROUPNORM_OPENVINO=ON``)
adds one operation, ``GroupnormGroupNorm``, that runs groupnorm's kernel on
OpenVINO's threads, and ONNX frontend conversions that map ``GroupNormalization``
(opsets 18 and 21) and ONNX Runtime's ``com.microsoft.GroupNorm`` and
``com.microsoft.SkipGroupNorm`` onto it::

    import openvino as ov, groupnorm.openvino
    core = ov.Core()
    core.add_extension(groupnorm.openvino.extension_path())   # before read_model
    model = core.read_model("model.onnx")

Build it with the package (OpenVINO found from the ``openvino`` Python package
of the building Python)::

    CMAKE_ARGS="-DGROUPNORM_OPENVINO=ON" pip install --no-build-isolation .

Importing this module does not import OpenVINO.
"""
from __future__ import annotations

import os

__all__ = ["extension_path", "packaged_path", "OP_TYPE", "ENV_VAR"]

# the operation's type name, as OpenVINO's performance counters report it
OP_TYPE = "GroupnormGroupNorm"
# an extension built elsewhere (a standalone CMake build) can be named by this variable
ENV_VAR = "GROUPNORM_OPENVINO_EXTENSION"
_NAME = "libgroupnorm_openvino.so"

_BUILD_HELP = (
    "build it with the package: CMAKE_ARGS=\"-DGROUPNORM_OPENVINO=ON\" pip install --no-build-isolation . "
    "(with the openvino Python package installed), or build the CMake target groupnorm_openvino "
    "(cmake -DGROUPNORM_OPENVINO=ON) and set " + ENV_VAR + " to the library's path")


def packaged_path() -> str:
    """Where a package built with the extension holds it (the file may not exist)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), _NAME)


def extension_path() -> str:
    """Absolute path of the OpenVINO extension library, for ``ov.Core().add_extension``.

    ``$GROUPNORM_OPENVINO_EXTENSION`` when set (it must name an existing file),
    else the library installed inside this package. Raises FileNotFoundError,
    saying how to build it, when there is none.
    """
    env = os.environ.get(ENV_VAR)
    if env:
        if not os.path.isfile(env):
            raise FileNotFoundError(f"{ENV_VAR}={env!r} is not a file; unset it to use the library installed with "
                                    f"groupnorm, or {_BUILD_HELP}")
        return os.path.abspath(env)
    path = packaged_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"groupnorm was built without its OpenVINO extension ({path} does not exist): "
                                f"{_BUILD_HELP}")
    return path
