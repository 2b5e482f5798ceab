"""dynadnn: dynamic DNNs at run time.

The whole path in plain Python (each name is imported on first use, so `import dynadnn` stays light):

    import dynadnn as dd
    net, meta = dd.load_checkpoint("zoo:animals")            # a path, an OFA .pth, or zoo:NAME
    data = dd.load_dataset("animals")
    tables = dd.profile_device(net, ["cpu:1t"], members=20)   # latency tables of this device
    predictor, fit = dd.fit_accuracy_predictor(net, data, samples=40)
    family = dd.choose_family(net, predictor, tables, data, members=4).family
    family.save("runs/family")
    with dd.RuntimeManager(family, "feedback", dd.Targets(deadline_ms=5), supernet=net) as mgr:
        logits = mgr.predict(images)

`dynadnn --help` lists the same steps as commands; each command is a thin shell over these functions.
"""

from __future__ import annotations

import importlib

from . import zoo  # noqa: F401 - registers the zoo: scheme (fileio.register_scheme)

__version__ = "0.1.0"

_EXPORTS = {
    # errors
    "UserError": "errors",
    # search spaces and architectures
    "SearchSpace": "space", "Arch": "space", "load_space": "space", "list_presets": "space",
    # data
    "load_dataset": "data",
    # super-networks and members
    "SuperNet": "supernet", "StaticNet": "supernet", "load_checkpoint": "supernet", "save_checkpoint": "supernet",
    "list_models": "zoo", "DynamicNetwork": "dynamic",
    # measuring members
    "calibrate": "evaluate", "calibrate_members": "evaluate", "top1": "evaluate",
    # predictors
    "LatencyTable": "predict.latency", "load_tables": "predict.latency", "AccuracyPredictor": "predict.accuracy",
    "FlopsModel": "predict.flops", "profile_device": "predict.fitting",
    "fit_accuracy_predictor": "predict.fitting",
    # search and the family
    "SearchProblem": "search", "NSGA2Search": "search", "EvolutionSweep": "search",
    "propose_candidates": "selection", "choose_family": "selection", "Family": "family", "Member": "family",
    # the runtime
    "RuntimeManager": "runtime.manager", "Targets": "runtime.options", "load_family": "runtime.members",
    "FamilySource": "runtime.members", "run_experiment": "runtime.experiment", "load_scenario": "runtime.scenario",
}

__all__ = sorted(_EXPORTS) + ["create_model", "__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dynadnn' has no attribute '{name}'")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def create_model(name: str, *, seed: int = 0):
    """A super-network by name, as timm's `create_model`: `zoo:NAME` or a checkpoint path gives trained
    weights (metadata in `load_checkpoint`'s second value); a preset name (`list_presets()`) gives the
    space with random weights drawn with `seed`."""
    import torch

    from .space import list_presets, load_space
    from .supernet import SuperNet, load_checkpoint

    if not str(name).startswith("zoo:") and name in list_presets():
        torch.manual_seed(seed)
        return SuperNet(load_space(name))
    return load_checkpoint(name)[0]
