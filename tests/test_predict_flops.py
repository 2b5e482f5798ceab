"""Analytical MACs and parameters equal a hook-based count on extracted static models."""

from __future__ import annotations

import random

import numpy as np

from dynadnn.evaluate import count_macs_params
from dynadnn.predict.flops import FlopsModel
from dynadnn.predict.genes import GeneCoding
from dynadnn.space import load_space
from dynadnn.supernet import SuperNet


def test_macs_and_params_match_hook_count_on_extracted_models():
    for name, n in (("tiny", 4), ("ofa_mbv3_w1.0", 1)):
        space = load_space(name)
        net = SuperNet(space).eval()
        model = FlopsModel(space)
        rng = random.Random(0)
        for arch in [space.max_arch(), space.min_arch()] + [space.sample(rng) for _ in range(n)]:
            macs, params = count_macs_params(net.extract(arch), (space.in_channels, arch.r, arch.r))
            assert model.macs(arch)[0] == macs
            assert model.params(arch)[0] == params


def test_vectorised_counts_equal_one_by_one():
    space = load_space("tiny")
    model, coding = FlopsModel(space), GeneCoding(space)
    g = coding.random(np.random.default_rng(1), 50)
    archs = coding.decode(g)
    assert list(model.macs_genes(g, coding)) == [model.macs(a)[0] for a in archs]
    assert list(model.params_genes(g, coding)) == [model.params(a)[0] for a in archs]
