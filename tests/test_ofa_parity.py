"""Parity with the reference Once-for-All implementation (the PyPI `ofa` package, imported as a test peer).

This is the proof that our super-network computes what OFA computes. `ofa`'s OFAMobileNetV3 (width 1.0 and
1.2, ks 3/5/7, e 3/4/6, d 2/3/4) gets seeded random weights, perturbed kernel transformation matrices and BN
affine parameters; before each sub-network is compared its BN statistics are re-estimated with `ofa`'s own
`set_running_statistics` (so activations stay O(1) and the logits depend on the input: a network whose
output is a constant would hide most bugs) and then perturbed again, and the classifier is scaled so the
logits are O(1-10). The same state dict is loaded into ours with `load_ofa_state_dict` and logits are
compared for the max, the min and 30 random sub-networks per width at resolutions 128-224.

Tolerances: the in-place path and the extracted static model do the same float32 operations as `ofa`, so
they must agree to 1e-5 absolute (in practice bit for bit). Folding BN into the convolution computes
(w*s) * x + (b - mu*s) instead of ((w * x) - mu) * s + b: the rounding differs by about one float32 ulp
(1.2e-7 relative) per folded layer, and the errors add up over the ~60 folded layers of the deepest
member, so about 60 x 1.2e-7 = 7e-6 of the logit scale; over the 64 members here we measured at most
4.3e-6 of max|logit| (the unfolded paths: exactly 0). The folded paths are held to 2e-5 x max(1,
max|logit|), about 3x the depth bound and orders of magnitude below what a real mistake (a wrong eps, a
wrong channel slice, a missed matrix) produces."""

from __future__ import annotations

import dataclasses
import random
import re

import pytest
import torch
from torch import nn

from dynadnn.errors import CheckpointError
from dynadnn.space import Arch, load_space
from dynadnn.supernet import SuperNet, load_checkpoint, load_ofa_state_dict, to_ofa_state_dict
from dynadnn.supernet.checkpoint import our_key_to_ofa

try:
    from ofa_peer import import_ofa

    OFAMobileNetV3, set_running_statistics = import_ofa()
except ImportError as exc:  # the peer is a test dependency: CI must have it, so fail loudly, never skip
    raise ImportError(f"the `ofa` package is required for the parity tests (`make test` installs it): {exc}")

WIDTHS = (1.0, 1.2)
N_RANDOM = 30
EXACT = 1e-5  # in-place and extracted paths vs ofa (same float32 arithmetic)
FOLD_REL = 2e-5  # BN-folded paths, relative to max(1, max|logit|); see the module docstring
RANDOM_RESOLUTIONS = (128, 144, 160, 176, 192)  # the max member runs at 224, the min at 128


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def set_ofa_active(net, arch: Arch) -> None:
    net.set_active_subnet(ks=list(arch.ks), e=list(arch.e), d=list(arch.d))


def perturb_bn_statistics(net: nn.Module, gen: torch.Generator) -> None:
    """Shift every running mean by 0.1 std and scale every variance by exp(0.1 N(0,1))."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.add_(0.1 * torch.randn(m.running_mean.shape, generator=gen) * m.running_var.sqrt())
                m.running_var.mul_(torch.exp(0.1 * torch.randn(m.running_var.shape, generator=gen)))


def recalibrate(net, arch: Arch, gen: torch.Generator) -> None:
    """Give `arch` sensible, then perturbed, statistics with ofa's own calibration routine."""
    set_ofa_active(net, arch)
    set_running_statistics(net, [(torch.randn(1, 3, arch.r, arch.r, generator=gen), None)])
    perturb_bn_statistics(net, gen)
    net.eval()


def build_ofa(width: float, seed: int = 0):
    """`ofa`'s super-network with seeded random weights, perturbed BN affine parameters and kernel
    transformation matrices, calibrated max-net statistics and a classifier scaled to O(1-10) logits."""
    torch.manual_seed(seed)
    net = OFAMobileNetV3(n_classes=1000, dropout_rate=0, width_mult=width, ks_list=[3, 5, 7],
                         expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4])
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        n_matrices = 0
        for name, p in net.named_parameters():
            if name.endswith("_matrix"):
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
                n_matrices += 1
            elif ".bn." in name and name.endswith(".weight"):
                p.copy_(1 + 0.25 * torch.randn(p.shape, generator=gen))
            elif ".bn." in name and name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        assert n_matrices == 40  # 20 elastic blocks x (7to5, 5to3)
    net.set_max_net()
    recalibrate(net, Arch((7,) * 20, (6,) * 20, (4,) * 5, 224), gen)
    with torch.no_grad():
        scale = 3.0 / net(torch.randn(2, 3, 224, 224, generator=gen)).std()
        net.classifier.linear.weight.mul_(scale)
        net.classifier.linear.bias.mul_(scale)
    return net


class Peer:
    def __init__(self, width: float):
        self.width = width
        self.space = load_space(f"ofa_mbv3_w{width}")
        self.ofa = build_ofa(width)
        self.ours = SuperNet(self.space).eval()
        self.sync()

    def sync(self) -> None:
        """Load ofa's current weights and statistics into ours, as a user would from a checkpoint."""
        load_ofa_state_dict(self.ours, self.ofa.state_dict(), source="ofa peer")

    def prepare(self, arch: Arch, seed: int) -> torch.Generator:
        """Fresh statistics for `arch` in ofa, copied into ours; returns a seeded generator for inputs."""
        gen = torch.Generator().manual_seed(seed)
        recalibrate(self.ofa, arch, gen)
        self.sync()
        return gen

    def arch(self, index: int) -> Arch:
        if index == 0:
            return self.space.max_arch(224)
        if index == 1:
            return self.space.min_arch(128)
        rng = random.Random(1000 * self.width + index)
        return self.space.sample(rng, r=rng.choice(RANDOM_RESOLUTIONS))


@pytest.fixture(scope="module", params=WIDTHS, ids=lambda w: f"w{w}")
def peer(request) -> Peer:
    return Peer(request.param)  # at one thread: conftest sets it on import, before any fixture runs


def _arch_id(i: int) -> str:
    return {0: "max", 1: "min"}.get(i, f"random{i - 1:02d}")


@pytest.mark.parametrize("index", range(2 + N_RANDOM), ids=_arch_id)
def test_subnetwork_logits_match_ofa(peer: Peer, index: int):
    """(a) in-place, (b) extracted static, (c) BN-folded in-place and extract().fuse(), all against ofa."""
    arch = peer.arch(index)
    gen = peer.prepare(arch, seed=index)
    x = torch.randn(2, 3, arch.r, arch.r, generator=gen)
    with torch.no_grad():
        ref = peer.ofa(x)
        ref_static = peer.ofa.get_active_subnet(preserve_weight=True).eval()(x)
        peer.ours.set_active(arch, fold_bn=False)
        inplace = peer.ours(x)
        member = peer.ours.extract(arch)
        extracted = member(x)
        peer.ours.set_active(arch)  # fold_bn=True, the runtime's default
        folded = peer.ours(x)
        fused = member.fuse()(x)

    scale = ref.abs().max().item()
    assert 0.3 < scale < 100, f"logits should be O(1-10) for the test to mean something, got max {scale:.3g}"
    assert max_diff(ref[0], ref[1]) > 0.05 * scale, "the reference output barely depends on its input"
    assert max_diff(inplace, ref) <= EXACT, f"in-place {arch.short()}: {max_diff(inplace, ref):.3g}"
    assert max_diff(extracted, ref_static) <= EXACT, f"extracted {arch.short()}: {max_diff(extracted, ref_static):.3g}"
    fold_tol = FOLD_REL * max(1.0, scale)
    assert max_diff(folded, ref) <= fold_tol, f"folded {arch.short()}: {max_diff(folded, ref):.3g} > {fold_tol:.3g}"
    assert max_diff(fused, ref) <= fold_tol, f"fused {arch.short()}: {max_diff(fused, ref):.3g} > {fold_tol:.3g}"
    assert max_diff(fused, folded) <= EXACT  # the same folded arithmetic, two code paths


def test_bn_calibration_matches_ofa_set_running_statistics(peer: Peer):
    arch = peer.arch(7)
    gen = peer.prepare(arch, seed=7)
    before = {k: v.clone() for k, v in peer.ofa.state_dict().items()}
    batches = [torch.randn(n, 3, 128, 128, generator=gen) for n in (3, 1, 2)]  # unequal sizes: weighted means
    set_ofa_active(peer.ofa, arch)
    set_running_statistics(peer.ofa, [(b, None) for b in batches])
    after = peer.ofa.state_dict()
    stats = peer.ours.calibrate_bn(arch, batches)

    changed = {k for k in after if k.endswith("running_mean") and not torch.equal(after[k], before[k])}
    assert {our_key_to_ofa(k) for k in stats if k.endswith("running_mean")} == changed
    for key, value in stats.items():
        ref = after[our_key_to_ofa(key)][: value.shape[0]]
        tol = 1e-5 * max(1.0, ref.abs().max().item())
        assert max_diff(value, ref) <= tol, f"{key}: {max_diff(value, ref):.3g}"
    x = torch.randn(2, 3, 160, 160, generator=gen)
    with torch.no_grad():
        peer.ofa.eval()
        ref = peer.ofa(x)
        peer.ours.set_active(dataclasses.replace(arch, r=160), bn_stats=stats, fold_bn=False)
        assert max_diff(peer.ours(x), ref) <= EXACT * max(1.0, ref.abs().max().item())


def test_training_step_matches_ofa(peer: Peer):
    """Train-mode logits (batch statistics), every parameter's gradient (kernel matrices included) and
    the updated running statistics, for one random sub-network."""
    arch = peer.arch(3)
    gen = peer.prepare(arch, seed=3)
    ours = SuperNet(dataclasses.replace(peer.space, dropout=0.0))  # the peer was built with dropout 0
    load_ofa_state_dict(ours, peer.ofa.state_dict())
    set_ofa_active(peer.ofa, arch)
    peer.ofa.train()
    ours.train()
    ours.set_active(arch)
    x = torch.randn(2, 3, 128, 128, generator=gen)
    weights = torch.randn(2, 1000, generator=gen)
    peer.ofa.zero_grad()
    ref = peer.ofa(x)
    (ref * weights).sum().backward()
    out = ours(x)
    (out * weights).sum().backward()
    peer.ofa.eval()
    ours.eval()

    assert max_diff(out, ref) <= EXACT * max(1.0, ref.abs().max().item())
    ofa_params = dict(peer.ofa.named_parameters())
    n_grads = 0
    for name, p in ours.named_parameters():
        q = ofa_params[our_key_to_ofa(name)]
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            n_grads += 1
            tol = 1e-4 * max(1.0, q.grad.abs().max().item())
            assert max_diff(p.grad, q.grad) <= tol, f"grad {name}: {max_diff(p.grad, q.grad):.3g}"
    assert n_grads > 50
    theirs = peer.ofa.state_dict()
    for name, buf in ours.named_buffers():
        if "running" in name:
            ref_buf = theirs[our_key_to_ofa(name)]
            assert max_diff(buf, ref_buf) <= 1e-5 * max(1.0, ref_buf.abs().max().item()), name


def test_export_loads_into_ofa_strictly_and_gives_the_same_logits(peer: Peer):
    gen = peer.prepare(peer.arch(4), seed=11)
    exported = to_ofa_state_dict(peer.ours)
    fresh = OFAMobileNetV3(n_classes=1000, dropout_rate=0, width_mult=peer.width, ks_list=[3, 5, 7],
                           expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4])
    # nn.Module's loader, not ofa's override (which renames keys and fills in the ones it does not get)
    nn.Module.load_state_dict(fresh, exported, strict=True)
    theirs = peer.ofa.state_dict()
    assert set(exported) == set(theirs)
    assert all(torch.equal(exported[k], theirs[k]) for k in theirs)
    fresh.eval()
    for index in (1, 4):
        arch = peer.arch(index)
        x = torch.randn(1, 3, arch.r, arch.r, generator=gen)
        set_ofa_active(fresh, arch)
        with torch.no_grad():
            peer.ours.set_active(arch, fold_bn=False)
            assert max_diff(fresh(x), peer.ours(x)) <= EXACT


def _legacy_name(key: str) -> str:
    return re.sub(r"^(blocks\.\d+)\.conv\.", r"\1.mobile_inverted_conv.", key)


def test_legacy_mobile_inverted_conv_checkpoint_loads(peer: Peer, tmp_path):
    """Old OFA releases name the blocks `mobile_inverted_conv`; w1.0 is stored bare, w1.2 the way training
    scripts save it (`{"state_dict": ...}` with DataParallel's `module.` prefix)."""
    wrap = "bare" if peer.width == 1.0 else "state_dict+module"
    arch = peer.arch(5)
    gen = peer.prepare(arch, seed=5)
    state = {_legacy_name(k): v for k, v in peer.ofa.state_dict().items()}
    assert sum(".mobile_inverted_conv." in k for k in state) > 400
    if wrap != "bare":
        state = {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 150}
    path = tmp_path / "ofa_legacy.pth"
    torch.save(state, path)
    net, meta = load_checkpoint(path)  # preset guessed from the shapes
    assert meta["preset"] == f"ofa_mbv3_w{peer.width}" and meta["format"] == "ofa"
    expected = peer.ours.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in net.state_dict().items())
    x = torch.randn(1, 3, arch.r, arch.r, generator=gen)
    set_ofa_active(peer.ofa, arch)
    with torch.no_grad():
        net.set_active(arch, fold_bn=False)
        assert max_diff(net(x), peer.ofa(x)) <= EXACT


def test_static_teacher_checkpoint_loads_and_max_member_matches(peer: Peer, tmp_path):
    gen = peer.prepare(peer.space.max_arch(224), seed=9)
    teacher = peer.ofa.get_active_subnet(preserve_weight=True).eval()
    path = tmp_path / "teacher.pth"
    torch.save(teacher.state_dict(), path)
    assert not any("_matrix" in k for k in teacher.state_dict())  # a static model has no kernel matrices
    net, meta = load_checkpoint(path)
    assert meta["preset"] == f"ofa_mbv3_w{peer.width}"
    for blk in net.blocks:  # absent in the file: they stay the identity OFA starts from
        assert all(torch.equal(m, torch.eye(m.shape[0])) for m in blk.kernel_transforms.values())
    x = torch.randn(2, 3, 224, 224, generator=gen)
    with torch.no_grad():
        ref = teacher(x)
        net.set_active(peer.space.max_arch(224), fold_bn=False)
        assert max_diff(net(x), ref) <= EXACT
    with pytest.raises(CheckpointError, match="shape"):  # and a teacher of one width does not fit the other
        other = "ofa_mbv3_w1.2" if peer.width == 1.0 else "ofa_mbv3_w1.0"
        load_checkpoint(path, preset=other)


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_reorganize_channels_matches_ofa(peer: Peer, stage: int):
    full = peer.space.max_arch(160)
    gen = peer.prepare(full, seed=20 + stage)
    ours = peer.ours
    x = torch.randn(1, 3, 160, 160, generator=gen)
    with torch.no_grad():
        ours.set_active(full, fold_bn=False)
        before = ours(x)
    params = {name: p for name, p in ours.named_parameters()}

    peer.ofa.re_organize_middle_weights(expand_ratio_stage=stage)
    ours.reorganize_channels(expand_ratio_stage=stage)

    assert all(p is params[name] for name, p in ours.named_parameters())  # optimizers keep working
    theirs = peer.ofa.state_dict()
    for key, value in to_ofa_state_dict(ours).items():
        assert torch.equal(value, theirs[key]), f"{key} differs after reorganising (stage {stage})"
    with torch.no_grad():
        ours.set_active(full, fold_bn=False)
        after = ours(x)  # a permutation of the middle channels: the max network computes the same function
        assert max_diff(after, before) <= FOLD_REL * max(1.0, before.abs().max().item())
        arch = peer.arch(6 + stage)
        set_ofa_active(peer.ofa, arch)
        xa = torch.randn(1, 3, arch.r, arch.r, generator=gen)
        ours.set_active(arch, fold_bn=False)
        ref = peer.ofa(xa)
        assert max_diff(ours(xa), ref) <= EXACT * max(1.0, ref.abs().max().item())
