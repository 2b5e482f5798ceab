"""The elastic super-network, its static sub-networks and OFA checkpoint compatibility.

    net = SuperNet(load_space("tiny"))
    net.set_active(arch)                 # in-place: caches sliced/transformed (and BN-folded) weights
    stats = net.calibrate_bn(arch, batches)
    member = net.extract(arch, bn_stats=stats).fuse()   # plain Conv2d/BatchNorm2d/Linear model
"""

from .plan import Plan
from .network import SuperNet
from .static import StaticNet
from .checkpoint import load_checkpoint, save_checkpoint, load_ofa_state_dict, to_ofa_state_dict, read_checkpoint_meta

__all__ = ["SuperNet", "Plan", "StaticNet", "load_checkpoint", "save_checkpoint", "load_ofa_state_dict",
           "to_ofa_state_dict", "read_checkpoint_meta"]
