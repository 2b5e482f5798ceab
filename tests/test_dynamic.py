"""DynamicNetwork: resident members compute what the extracted static model computes, switching picks the
right member, a concurrent switch never mixes two members, and inputs are resized per member."""

from __future__ import annotations

import random
import threading

import pytest
import torch
import torch.nn.functional as F

from dynadnn.data import resize_batch
from dynadnn.dynamic import DynamicNetwork, calibrate_members
from dynadnn.errors import UserError
from dynadnn.space import Arch


@pytest.fixture(scope="module")
def setup(perturbed_supernet):
    net = perturbed_supernet()
    space = net.space
    rng = random.Random(3)
    archs = [space.max_arch(32), space.min_arch(20), space.sample(rng, 24), space.sample(rng, 28)]
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(16, 1, 32, 32, generator=gen) for _ in range(2)]
    stats = calibrate_members(net, archs, batches)
    dyn = DynamicNetwork(net, archs, bn_stats=stats, warmup=2)
    x = torch.randn(2, 1, 32, 32, generator=gen)
    # The reference: each member extracted as a plain (unfolded) static model, run on the resized input.
    with torch.no_grad():
        refs = [net.extract(a, bn_stats=s)(resize_batch(x, a.r))
                for a, s in zip(archs, stats)]
    return net, archs, stats, dyn, x, refs


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


def test_resident_members_match_extracted_static_models(setup):
    net, archs, stats, dyn, x, refs = setup
    assert all(m.backend in ("torchscript", "eager") for m in dyn.members)
    assert float(refs[0].abs().max()) > 0.1  # the comparison is not between near-zero logits
    for i, ref in enumerate(refs):
        dyn.switch(i)
        out = dyn.predict(x)
        assert out.shape == ref.shape
        assert _close(out, ref), f"member {i}: max |diff| {float((out - ref).abs().max()):.3g}"


def test_calibrated_statistics_are_used(setup):
    net, archs, stats, dyn, x, refs = setup
    with torch.no_grad():
        uncalibrated = net.extract(archs[0])(x)
    assert not _close(uncalibrated, refs[0])


@pytest.mark.parametrize("mode,backend", [("resident", "eager"), ("inplace", "auto")])
def test_other_backends_and_inplace_mode_match_static(setup, mode, backend):
    net, archs, stats, _, x, refs = setup
    dyn = DynamicNetwork(net, archs[:2], bn_stats=stats[:2], mode=mode, backend=backend, warmup=1)
    for i in range(2):
        dyn.switch(i)
        assert _close(dyn.predict(x), refs[i])
        if mode == "inplace":  # the super-network itself now runs the member's prepared plan
            with torch.no_grad():
                xi = resize_batch(x, archs[i].r)
                assert _close(net(xi), refs[i])
                assert net.active_arch == archs[i]


def test_switch_returns_the_requested_member(setup):
    net, archs, stats, dyn, x, refs = setup
    for i in (2, 0, 3, 1):
        member = dyn.switch(i)
        assert member is dyn.members[i] and dyn.active is member and dyn.active_index == i
        assert member.arch == archs[i]
    # by architecture, including one that differs only in inactive block slots (the same network)
    a = archs[2]
    slots = set(net.space.active_blocks(a))
    inactive = [j for j in range(len(a.ks)) if j not in slots]
    assert inactive, "the sampled arch should have unused slots"
    ks = list(a.ks)
    ks[inactive[0]] = 7 if ks[inactive[0]] != 7 else 3
    assert dyn.switch(Arch(tuple(ks), a.e, a.d, a.r)) is dyn.members[2]
    with pytest.raises(UserError, match="not resident"):
        dyn.switch(net.space.max_arch(20))
    with pytest.raises(IndexError):
        dyn.switch(len(archs))
    with pytest.raises(UserError, match="already resident"):
        dyn.add(archs[0])


def test_switch_never_mixes_two_members(setup):
    """One thread switches as fast as it can while another predicts: every result must equal the
    reference output of the member that reported producing it (members differ in resolution too)."""
    net, archs, stats, dyn, x, refs = setup
    stop = threading.Event()
    switches = [0]

    def switcher():
        rng = random.Random(0)
        while not stop.is_set():
            dyn.switch(rng.randrange(len(archs)))
            switches[0] += 1

    thread = threading.Thread(target=switcher, daemon=True)
    thread.start()
    seen = set()
    try:
        for _ in range(40):
            member, out = dyn.predict_with_member(x)
            i = dyn.members.index(member)
            seen.add(i)
            assert _close(out, refs[i]), f"output of member {i} does not match it: two members mixed"
            assert not any(_close(out, refs[j]) for j in range(len(refs)) if j != i)
    finally:
        stop.set()
        thread.join()
    assert switches[0] > 40 and len(seen) >= 2


def test_predict_resizes_to_the_member_resolution(setup):
    net, archs, stats, dyn, x, refs = setup
    dyn.switch(1)  # r=20
    assert dyn.active.resolution == 20
    small = F.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False, antialias=True)
    assert torch.equal(dyn.predict(small), dyn.predict(x))
    assert _close(dyn.predict(x[0]), refs[1][:1])  # one CHW image
    with pytest.raises(UserError, match=r"expected images shaped \(N, 1, H, W\)"):
        dyn.predict(torch.randn(1, 3, 32, 32))


def test_bad_arguments_are_user_errors(setup):
    net, archs, stats, *_ = setup
    with pytest.raises(UserError, match="backend"):
        DynamicNetwork(net, archs[:1], backend="tensorrt")
    with pytest.raises(UserError, match="one entry per member"):
        DynamicNetwork(net, archs[:2], bn_stats=stats[:1])
    with pytest.raises(UserError, match="no member"):
        DynamicNetwork(net, [])


def test_demo_runs_and_prints_the_member_table(capsys):
    from dynadnn.cli import main

    assert main(["demo", "--members", "2", "--runs", "2", "--switch-only"]) == 0
    out = capsys.readouterr().out
    assert "resident members of 'tiny'" in out and "switch (pointer swap)" in out
    assert main(["demo", "--members", "1"]) == 2
    assert "--members: expected at least 2" in capsys.readouterr().err
