"""Evaluation: MACs counting, member parsing, calibrated top-1 and the `dynadnn eval` command."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from torch import nn

from dynadnn.errors import UserError
from dynadnn.evaluate import count_macs_params, evaluate_members, member_cost, parse_subnets
from dynadnn.space import SearchSpace, load_space
from dynadnn.supernet import SuperNet
from dynadnn.train import Recipe, train


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits):
    """A tiny super-network trained for a few steps on digits (the data the tests can afford)."""
    out = tmp_path_factory.mktemp("digits")
    recipe = Recipe(data="digits", batch_size=32, n_random=1, lr=0.1, warmup_epochs=0.1, steps=20)
    res = train(recipe, out, data=digits, progress=False, evaluate_at_end=False)
    return res.checkpoint, digits


def test_count_macs_matches_the_formula():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 5, stride=2, padding=2, groups=8),
                          nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    expected = 8 * 8 * 8 * 9 * 3 + 8 * 4 * 4 * 25 * 1 + 128 * 10
    params = (8 * 3 * 9 + 8) + (8 * 25 + 8) + (128 * 10 + 10)
    assert count_macs_params(model, (3, 8, 8)) == (expected, params)


def test_member_cost_orders_max_above_min():
    net = SuperNet(load_space("tiny")).eval()
    space = net.space
    (max_macs, max_params), (min_macs, min_params) = member_cost(net, space.max_arch()), member_cost(net, space.min_arch())
    assert max_macs > 3 * min_macs and max_params > min_params


def test_parse_subnets():
    space = load_space("tiny")
    members = parse_subnets("max,min,random:3", space)
    assert [n for n, _ in members] == ["max", "min", "random0", "random1", "random2"]
    assert members == parse_subnets("max,min,random:3", space)  # seeded
    for bad in ("biggest", "random:x", "", "random:-3", "random:0", "max,random:1000000", "random:--3", "random:"):
        with pytest.raises(UserError, match="^subnets: "):
            parse_subnets(bad, space)
    with pytest.raises(UserError, match="^seed: "):
        parse_subnets("max", space, seed=-1)
    assert [n for n, _ in parse_subnets("random:1,max,random:2", space)] == ["random0", "max", "random1", "random2"]


def test_evaluate_members_checks_its_arguments(digits):
    net = SuperNet(load_space("tiny")).eval()
    members = [("max", net.space.max_arch())]
    with pytest.raises(UserError, match="^calib_images: "):
        evaluate_members(net, digits, members, n_calib=0)
    with pytest.raises(UserError, match="^subnets: no members"):
        evaluate_members(net, digits, [])
    other = load_space("tiny").to_dict()
    other["n_classes"] = 3
    with pytest.raises(UserError, match="10 classes; the network expects 1 and 3"):
        evaluate_members(SuperNet(SearchSpace.from_dict(other)), digits, members)


def test_calibrated_evaluation(trained):
    ckpt, data = trained
    from dynadnn.supernet import load_checkpoint

    net, _ = load_checkpoint(ckpt)
    members = [("max", net.space.max_arch()), ("min", net.space.min_arch())]
    rows = evaluate_members(net, data, members, n_calib=500)
    assert all(0 <= r["top1"] <= 100 for r in rows)
    assert rows[0]["top1"] > 20  # better than chance after 20 steps
    # evaluation leaves the super-network untouched: evaluating twice gives the same numbers
    assert evaluate_members(net, data, members, n_calib=500) == rows


def test_eval_cli_json_last_line(trained, cli_env):
    ckpt, _ = trained
    r = subprocess.run([sys.executable, "-m", "dynadnn", "eval", str(ckpt), "--subnets", "max,min,random:1",
                        "--calib-images", "300", "--threads", "1", "--json"],
                       env=cli_env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    names = [m["name"] for m in doc["members"]]
    assert names == ["max", "min", "random0"] and doc["data"] == "digits"
    mx, mn = doc["members"][0], doc["members"][1]
    assert mx["macs"] > mn["macs"] and mx["params"] > mn["params"] and set(mx) == {"name", "arch", "top1", "macs", "params"}


def test_eval_cli_errors_are_one_line(tmp_path, cli_env):
    r = subprocess.run([sys.executable, "-m", "dynadnn", "eval", str(tmp_path / "nope.safetensors")],
                       env=cli_env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no such checkpoint" in r.stderr and r.stderr.count("\n") == 1
