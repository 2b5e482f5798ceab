"""ONNX export of static members and single layers, and the ONNX Runtime session the runtime serves them with.

Here, below `predict` and `runtime`, so that latency tables can be profiled on the same backend and with the
same graph as the runtime serves (`dynadnn profile --backend ort`).
"""

from __future__ import annotations

import io
import warnings
from typing import Sequence

import torch

BACKENDS = ("torch", "ort")  # what serves a member on the CPU: PyTorch (TorchScript or eager) or ONNX Runtime


def export_onnx(model: torch.nn.Module, r: int, in_channels: int) -> bytes:
    """A member as an ONNX graph (opset 17, dynamic batch), its global poolings made single ops."""
    return export_module(model, (1, in_channels, r, r), dynamic_batch=True)


def export_module(model: torch.nn.Module, shape: Sequence[int], dynamic_batch: bool = False) -> bytes:
    """Any module taking one tensor of `shape` as an ONNX graph (input "x", output "logits"; opset 17, the
    TorchScript-based exporter, which needs only `onnx`), with `fuse_global_pools` applied."""
    import onnx

    buf = io.BytesIO()
    axes = {"x": {0: "n"}, "logits": {0: "n"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.zeros(*shape),), buf, dynamo=False, input_names=["x"],
                          output_names=["logits"], dynamic_axes=axes, opset_version=17)
    graph = onnx.load_from_string(buf.getvalue())
    fuse_global_pools(graph.graph)
    return graph.SerializeToString()


def ort_session(onnx_bytes: bytes, threads: int):
    """An ONNX Runtime CPU session as the runtime uses it: `threads` intra-op threads, sequential, all graph
    optimisations, spinning disabled so idle pool threads do not burn the CPU the competitors and we share."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])


def _reduce_mean_axis(node) -> int | None:
    """The single axis a keepdims ReduceMean (opset < 18, axes as an attribute) averages over, else None."""
    if node.op_type != "ReduceMean":
        return None
    attrs = {a.name: a for a in node.attribute}
    keep = attrs["keepdims"].i if "keepdims" in attrs else 1
    axes = list(attrs["axes"].ints) if "axes" in attrs else []
    return axes[0] if keep == 1 and len(axes) == 1 and len(node.input) == 1 else None


def fuse_global_pools(graph) -> int:
    """Rewrite each `ReduceMean(axis 3) -> ReduceMean(axis 2)` chain (OFA's `x.mean(3).mean(2)`, which
    the PyTorch members keep so they match OFA's numbers exactly) into one `GlobalAveragePool`. ONNX
    Runtime runs that op in its blocked NCHWc layout; the two ReduceMeans leave it for plain NCHW and
    back, and cost a third of a small member's latency here (benchmarks/export.py). Outputs change by
    float rounding only (the sum is taken in another order). Returns how many chains were fused."""
    from onnx import helper

    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    fused, drop = 0, set()
    for node in list(graph.node):
        if _reduce_mean_axis(node) != 3 or node.output[0] in outputs:
            continue
        after = consumers.get(node.output[0], [])
        if len(after) != 1 or _reduce_mean_axis(after[0]) != 2:
            continue
        second = after[0]
        pool = helper.make_node("GlobalAveragePool", [node.input[0]], [second.output[0]], name=f"{node.name}_gap")
        graph.node.insert(list(graph.node).index(node), pool)
        drop.update({id(node), id(second)})
        fused += 1
    keep = [n for n in graph.node if id(n) not in drop]
    del graph.node[:]
    graph.node.extend(keep)
    return fused
