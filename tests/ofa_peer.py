"""Import the PyPI `ofa` package (the reference Once-for-All implementation) as a test peer.

Its model code never touches torchvision, PIL or gdown, but its package imports them at module level;
torchvision does not install beside the CPU torch used here, so stand-in modules take their place.
Everything returned here is `ofa`'s own code."""

from __future__ import annotations

import importlib
import sys
import types


class _Anything(types.ModuleType):
    """A module whose every attribute is a harmless placeholder class."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        placeholder = type(name, (), {"__init__": lambda self, *a, **k: None})
        setattr(self, name, placeholder)
        return placeholder


def _stand_in(name: str) -> None:
    if name in sys.modules:
        return
    try:
        importlib.import_module(name)
        return
    except ImportError:
        pass
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        sub = ".".join(parts[:i])
        if sub not in sys.modules:
            mod = _Anything(sub)
            mod.__path__ = []  # behave as a package
            sys.modules[sub] = mod
            if i > 1:
                setattr(sys.modules[".".join(parts[: i - 1])], parts[i - 1], mod)


def import_ofa():
    """Returns (OFAMobileNetV3, set_running_statistics) or raises ImportError if `ofa` is absent."""
    for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional",
                 "torchvision.datasets", "torchvision.models", "PIL", "PIL.Image", "gdown"):
        _stand_in(name)
    from ofa.imagenet_classification.elastic_nn.networks import OFAMobileNetV3
    from ofa.imagenet_classification.elastic_nn.utils import set_running_statistics

    return OFAMobileNetV3, set_running_statistics
