"""The ONNX export the runtime serves: OFA's two-step global pooling becomes one GlobalAveragePool, and the
graph still computes the member."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from dynadnn.deploy import export_onnx, fuse_global_pools
from dynadnn.space import load_space
from dynadnn.supernet.network import SuperNet


@pytest.mark.parametrize("which", ["min", "max"])
def test_exported_member_pools_once_and_computes_the_member(which):
    space = load_space("tiny")
    torch.manual_seed(0)
    net = SuperNet(space).eval()
    arch = space.min_arch(20) if which == "min" else space.max_arch(32)
    member = net.extract(arch).fuse()
    graph = onnx.load_from_string(export_onnx(member, arch.r, space.in_channels))
    ops = [n.op_type for n in graph.graph.node]
    n_se = sum(1 for b in member.blocks if b.se is not None)
    assert "ReduceMean" not in ops
    assert ops.count("GlobalAveragePool") == n_se + 1  # one per squeeze-excite, one before the classifier
    import onnxruntime as ort

    x = torch.randn(3, space.in_channels, arch.r, arch.r)
    got = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        ref = member(x).numpy()
    assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())


def _reduce(name, src, dst, axis):
    return helper.make_node("ReduceMean", [src], [dst], name=name, axes=[axis], keepdims=1)


def test_only_a_private_mean3_mean2_chain_is_fused():
    nodes = [_reduce("a", "x", "a_out", 3), _reduce("b", "a_out", "y", 2),  # fused
             _reduce("c", "x", "c_out", 3), _reduce("d", "c_out", "z", 2),  # c_out is also an output: kept
             _reduce("e", "x", "e_out", 2), _reduce("f", "e_out", "w", 3)]  # wrong order: kept
    io = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, None)  # noqa: E731
    graph = helper.make_graph(nodes, "g", [io("x")], [io("y"), io("z"), io("c_out"), io("w")])
    assert fuse_global_pools(graph) == 1
    assert [(n.op_type, list(n.input), list(n.output)) for n in graph.node][:1] == [("GlobalAveragePool", ["x"], ["y"])]
    assert [n.name for n in graph.node][1:] == ["c", "d", "e", "f"]
