"""Latency look-up tables: OFA's keys, Dynamic-OFA's files, vectorised sums equal per-key sums."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest

from dynadnn.errors import UserError
from dynadnn.predict.genes import GeneCoding
from dynadnn.predict.latency import Correction, LatencyTable, arch_layers, reference_table
from dynadnn.space import load_space

W12 = load_space("ofa_mbv3_w1.2")


@pytest.fixture(scope="module")
def tables(reference):
    return {c: reference_table(reference, c, W12) for c in ("jetson_cpu", "jetson_gpu")}


def test_keys_match_dynamic_ofa_files_exactly(reference):
    raw = json.loads((reference / "dynamic-ofa/latency_lut/jetson_xavier_nx_cpu/164_lookup_table.json").read_text())
    keys = {layer.key for layer in arch_layers(W12, W12.max_arch(164))}
    keys |= {layer.key for layer in arch_layers(W12, W12.min_arch(164))}
    assert keys <= set(raw)
    assert "expanded_conv-input:82x82x24-output:41x41x32-expand:144-kernel:7-stride:2-idskip:0-se:0-hs:0" in keys
    assert "Conv-input:164x164x3-output:82x82x24" in keys and "AvgPool2D-input:6x6x1152-output:1x1x1152" in keys


def test_vectorised_prediction_equals_per_key_sum(tables):
    rng = random.Random(0)
    for table in tables.values():
        archs = [W12.sample(rng, rng.choice(table.resolutions)) for _ in range(60)]
        fast = table.predict(archs)
        slow = np.array([table.layer_sum(a) for a in archs])
        np.testing.assert_allclose(fast, slow, rtol=1e-12)


def test_prediction_equals_ofa_tutorial_estimator(tables):
    sys.path.insert(0, str(Path(__file__).parent))
    from ofa_peer import import_ofa

    try:
        import_ofa()
        from ofa.tutorial.latency_table import LatencyEstimator
    except ImportError:
        pytest.skip("ofa package not importable")
    table = tables["jetson_cpu"]
    rng = random.Random(1)
    for _ in range(20):
        arch = W12.sample(rng, rng.choice(table.resolutions))
        peer = object.__new__(LatencyEstimator)  # its __init__ downloads; give it Dynamic-OFA's table instead
        peer.lut = table.entries[arch.r]
        assert table.predict(arch)[0] == pytest.approx(peer.predict_network_latency_given_spec(arch.to_ofa()), rel=1e-12)


def test_missing_layer_key_is_named(tables):
    entries = {r: dict(v) for r, v in tables["jetson_gpu"].entries.items()}
    key = "expanded_conv-input:14x14x136-output:14x14x136-expand:816-kernel:7-stride:1-idskip:1-se:1-hs:1"
    del entries[224][key]
    with pytest.raises(UserError, match="kernel:7-stride:1-idskip:1-se:1-hs:1"):
        LatencyTable(W12, "jetson_gpu", entries, "edited table")


def test_resolution_outside_the_table_is_refused(tables):
    with pytest.raises(UserError, match="no entries for resolution 128"):
        tables["jetson_gpu"].predict(W12.max_arch(128))


def test_export_round_trip_json_and_ofa_yaml(tables, tmp_path):
    table = tables["jetson_cpu"]
    table.correction = None
    table.save(tmp_path / "t", yaml_too=True)
    again = LatencyTable.from_dynamic_ofa(tmp_path / "t", W12, "x")
    from_yaml = LatencyTable.from_ofa_yaml(tmp_path / "t", W12, "jetson_cpu")
    archs = [W12.sample(random.Random(i), 192) for i in range(20)]
    np.testing.assert_allclose(again.predict(archs), table.predict(archs))
    np.testing.assert_allclose(from_yaml.predict(archs), table.predict(archs))
    assert again.context == "jetson_cpu"  # from table.json


def test_correction_recovers_a_linear_relation():
    rng = np.random.default_rng(0)
    lut, n = rng.uniform(2, 10, 50), rng.integers(10, 21, 50).astype(float)
    c = Correction.fit(lut, n, 1.3 * lut + 0.2 * n + 0.5)
    assert (c.a, c.b, c.c) == pytest.approx((1.3, 0.2, 0.5), abs=1e-9)


def test_correction_with_resolution_offsets_recovers_them_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    lut, n = rng.uniform(2, 10, 60), rng.integers(10, 21, 60).astype(float)
    r = rng.choice([20, 24, 28, 32], 60)
    shift = {20: 0.0, 24: 0.1, 28: -0.3, 32: -0.2}
    y = 1.3 * lut + 0.2 * n + 0.5 + np.array([shift[v] for v in r])
    c = Correction.fit(lut, n, y, r)
    assert c.offsets == pytest.approx({24: 0.1, 28: -0.3, 32: -0.2}, abs=1e-9)
    np.testing.assert_allclose(c.apply(lut, n, r), y, atol=1e-9)
    again = Correction.from_dict(json.loads(json.dumps(c.to_dict())))
    assert again == c
    assert Correction.from_dict({"a": 1, "b": 0, "c": 0}).offsets == {}  # tables written before offsets
    with pytest.raises(UserError, match="offsets"):
        Correction.from_dict({"a": 1, "b": 0, "c": 0, "offsets": {"x": 1}}, "t.json: field 'correction'")
    # a table predicts with them: genes carry the resolution
    from dynadnn.predict.latency import space_layers

    space = load_space("tiny")
    entries = {}
    for v in space.resolutions:
        sl = space_layers(space, v)
        layers = list(sl.fixed) + [layer for per_k in sl.blocks for per_e in per_k for layer in per_e]
        entries[v] = {layer.key: {"mean": 1.0} for layer in layers}
    table = LatencyTable(space, "cpu:1t", entries, "test", Correction(1.0, 0.0, 0.0, {28: 5.0}))
    coding = GeneCoding(space)
    g = coding.encode([space.min_arch(24), space.min_arch(28)])
    base = Correction(1.0, 0.0, 0.0).apply(table.lut_sum_genes(g, coding), coding.block_mask(g).sum(1))
    np.testing.assert_allclose(table.predict_genes(g, coding) - base, [0.0, 5.0])


def test_member_check_adds_offsets_only_where_cross_validation_wants_them():
    from dynadnn.predict.profiling import MemberCheck

    space = load_space("tiny")
    rng = random.Random(0)
    archs = [space.sample(rng, rng.choice(space.resolutions)) for _ in range(100)]
    gen = np.random.default_rng(1)
    lut = gen.uniform(0.2, 1.0, 100)
    nb = np.array([len(space.active_blocks(a)) for a in archs], float)
    noise = gen.normal(0, 0.01, 100)
    step = np.array([0.0 if a.r <= 24 else -0.15 for a in archs])
    shifted = MemberCheck("cpu:2t", archs, lut + step + noise, lut, lut, nb)
    shifted.fit()
    assert shifted.report["resolution_offsets"] and shifted.report["tau_corrected"] > 0.85
    plain = MemberCheck("cpu:1t", archs, 2 * lut + noise, lut, lut, nb)
    plain.fit()
    assert plain.report["tau_corrected"] > 0.85
    few = MemberCheck("cpu:1t", archs[:12], (lut + step + noise)[:12], lut[:12], lut[:12], nb[:12])
    few.fit()
    assert few.report["resolution_offsets"] is False  # too few members per resolution to fit offsets


def test_fastest_is_no_slower_than_any_sample(tables):
    table = tables["jetson_gpu"]
    arch, lat = table.fastest()
    coding = table.coding()
    sample = coding.random(np.random.default_rng(0), 2000)
    assert lat <= table.predict_genes(sample, coding).min()
    assert table.predict(arch)[0] == pytest.approx(lat)


def test_slot_costs_give_the_latency_change_of_a_kernel_expand_change(tables):
    """What the search's repair relies on: one active slot's (kernel, expand) change moves the predicted
    latency by the difference of its two slot-cost entries, with a correction's scale included."""
    import dataclasses

    corrected = dataclasses.replace(tables["jetson_cpu"], correction=Correction(1.7, 0.4, 3.0, {}))
    for table in (tables["jetson_gpu"], corrected):
        coding = table.coding()
        rng = np.random.default_rng(1)
        g = coding.canonical(coding.random(rng, 300))
        costs = table.slot_costs_genes(g, coding)
        assert costs.shape == (300, coding.nb, 9)
        mask = coding.block_mask(g)
        rows = np.arange(300)
        slot = np.array([rng.choice(np.flatnonzero(m)) for m in mask])  # one active slot per row
        new = rng.integers(0, 9, size=300)
        h = g.copy()
        h[rows, slot], h[rows, coding.nb + slot] = new // 3, new % 3
        cur = g[rows, slot] * 3 + g[rows, coding.nb + slot]
        np.testing.assert_allclose(table.predict_genes(h, coding) - table.predict_genes(g, coding),
                                   costs[rows, slot, new] - costs[rows, slot, cur], atol=1e-9)


def test_gene_onehot_equals_space_encoding():
    for space in (W12, load_space("tiny")):
        coding = GeneCoding(space)
        g = coding.random(np.random.default_rng(0), 200)
        assert (coding.onehot(g) == space.encode_many(coding.decode(g))).all()
        assert (coding.encode(coding.decode(g)) == g).all()


def test_speed_normalised_medians_take_out_a_common_slow_spell():
    """Runs of 20 callables, round-robin, on a machine whose speed changes every 25 runs (a level drawn from
    0.75-1.3) plus 2 % noise per run: the normalised medians keep the callables' true ratios far better than
    plain medians (measured: 2-6x closer over 8 seeds)."""
    from dynadnn.predict.profiling import speed_normalised_medians

    rng = np.random.default_rng(0)
    n, rounds = 20, 40
    true = np.linspace(1.0, 1.3, n)
    who = np.tile(np.arange(n), rounds)
    speed = np.repeat(rng.uniform(0.75, 1.3, len(who) // 25 + 1), 25)[: len(who)]
    seq = true[who] * speed * np.exp(rng.normal(0, 0.02, len(who)))
    plain = np.array([np.median(seq[who == i]) for i in range(n)])
    norm = speed_normalised_medians(who, seq, n, window=10)

    def spread(est):  # error in the ratios, scale taken out
        r = np.log(est / true)
        return float(np.std(r - r.mean()))

    assert spread(norm) < 0.5 * spread(plain)
    assert spread(norm) < 0.008
    # too few callables to read a speed from: the plain medians
    two = np.tile([0, 1], 30)
    seq2 = rng.random(60) + 1
    assert np.allclose(speed_normalised_medians(two, seq2, 2, 10), [np.median(seq2[0::2]), np.median(seq2[1::2])])


def test_time_interleaved_in_bursts_runs_each_callable_warm_and_counts_turns():
    from dynadnn.predict.profiling import time_interleaved

    calls = [0, 0, 0]

    def make(i):
        def fn():
            calls[i] += 1
        return fn

    out = time_interleaved([make(i) for i in range(3)], runs=8, warmup=1, burst=4)
    assert calls == [1 + 2 * (1 + 4)] * 3  # warm-up, then 2 turns of one untimed and 4 timed runs
    assert [t.count for t in out] == [2, 2, 2]  # a turn is one sample (the mean of its burst)


def test_backend_resolution_and_errors():
    from dynadnn.errors import UserError
    from dynadnn.predict.profiling import resolve_backend

    assert resolve_backend("auto", "cpu") == "ort" and resolve_backend("auto", "cuda") == "torch"
    assert resolve_backend("torch", "cpu") == "torch"
    with pytest.raises(UserError, match="CPU contexts only"):
        resolve_backend("ort", "cuda")
    with pytest.raises(UserError, match="expected auto, torch or ort"):
        resolve_backend("tvm", "cpu")


def test_onnx_runtime_layer_table_covers_every_layer_and_exports_each_once():
    from dynadnn.predict.profiling import count_layers, profile_layers

    space = load_space("tiny")
    cache: dict = {}
    entries, meta = profile_layers(space, "cpu:1t", [20], runs=2, warmup=1, backend="ort", onnx_cache=cache)
    assert meta["backend"] == "ort" and meta["burst"] == 16
    assert len(entries[20]) == count_layers(space, [20]) == len(cache)
    assert all(e["mean"] > 0 for e in entries[20].values())
    profile_layers(space, "cpu:2t", [20], runs=2, warmup=1, backend="ort", onnx_cache=cache)
    assert len(cache) == count_layers(space, [20])  # the second thread count reused every export
    table = LatencyTable(space, "cpu:1t", entries, "test")
    assert table.predict(space.max_arch(20))[0] > table.predict(space.min_arch(20))[0]


# --- self-describing tables: the space and the checkpoint travel in table.json ----------------------------
def custom_space():
    """A space that is no preset: tiny's skeleton with other widths, choices and resolutions."""
    from dynadnn.space import SearchSpace

    doc = load_space("tiny").to_dict()
    doc.update(name="custom_test", ks_choices=[3, 5], e_choices=[2, 4], d_choices=[1, 2], resolutions=[24, 32])
    doc["stages"][1]["width"] = 40
    return SearchSpace.from_dict(doc, "test")


def synthetic_entries(space, seed=0):
    from dynadnn.predict.latency import space_layers

    rng = np.random.default_rng(seed)
    entries = {}
    for r in space.resolutions:
        sl = space_layers(space, r)
        layers = list(sl.fixed) + [layer for per_k in sl.blocks for per_e in per_k for layer in per_e]
        entries[r] = {layer.key: {"count": 3, "mean": float(rng.uniform(0.01, 0.5)), "std": 0.001} for layer in layers}
    return entries


def test_custom_space_table_round_trips_without_any_preset(tmp_path, monkeypatch):
    from dynadnn.family import sha256_file
    from dynadnn.predict.latency import load_tables
    from dynadnn.supernet import SuperNet
    from dynadnn.supernet.checkpoint import save_checkpoint

    space = custom_space()
    ckpt = save_checkpoint(SuperNet(space), tmp_path / "custom.safetensors")
    retrained = save_checkpoint(SuperNet(space), tmp_path / "retrained.safetensors")
    tiny = save_checkpoint(SuperNet(load_space("tiny")), tmp_path / "tiny.safetensors")
    table = LatencyTable(space, "cpu:1t", synthetic_entries(space), "test", Correction(1.2, 0.01, 0.3, {32: -0.05}),
                         {"backend": "ort"}, sha256_file(ckpt))
    table.save(tmp_path / "prof" / "cpu_1t", {"checkpoint": str(ckpt)})
    doc = json.loads((tmp_path / "prof" / "cpu_1t" / "table.json").read_text())
    assert doc["space"] == space.to_dict() and doc["checkpoint_sha256"] == sha256_file(ckpt)

    def refuse(name):
        raise AssertionError(f"looked up preset {name!r}")

    monkeypatch.setattr("dynadnn.provenance.load_space", refuse)
    monkeypatch.setattr("dynadnn.space.load_space", refuse)
    again = load_tables(tmp_path / "prof", None, ["cpu:1t"], checkpoint=ckpt)["cpu:1t"]
    assert again.space == space and again.context == "cpu:1t" and again.correction == table.correction
    assert again.checkpoint_sha256 == table.checkpoint_sha256 and again.meta["backend"] == "ort"
    assert "space" not in again.meta and again.meta["checkpoint"] == str(ckpt)
    assert {r: dict(e) for r, e in again.entries.items()} == table.entries
    archs = [space.sample(random.Random(i)) for i in range(20)]
    np.testing.assert_allclose(again.predict(archs), table.predict(archs), rtol=1e-12)
    again.check_checkpoint(retrained)  # same space, other weights: latency depends on shapes only
    with pytest.raises(UserError) as err:
        load_tables(tmp_path / "prof", space, ["cpu:1t"], checkpoint=tiny)
    assert r"space field 'stages[1].width': 40 vs 32" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match="latency table is for preset 'custom_test', not 'ofa_mbv3_w1.2'"):
        LatencyTable.from_dynamic_ofa(tmp_path / "prof" / "cpu_1t", W12, "cpu:1t")


def test_old_table_json_without_space_loads_by_preset_name(tmp_path):
    """A table.json as versions before the embedded space wrote it (written by hand here)."""
    tiny = load_space("tiny")
    entries = synthetic_entries(tiny, seed=1)
    for r, e in entries.items():
        (tmp_path / f"{r}_lookup_table.json").write_text(json.dumps(e))
    (tmp_path / "table.json").write_text(json.dumps(
        {"format": "dynadnn.latency_table/1", "context": "cpu:2t", "preset": "tiny", "resolutions": sorted(entries),
         "unit": "ms", "correction": {"a": 1.0, "b": 0.0, "c": 0.1}}))
    old = LatencyTable.from_dynamic_ofa(tmp_path)
    assert old.space == tiny and old.context == "cpu:2t" and old.correction == Correction(1.0, 0.0, 0.1)
    assert old.checkpoint_sha256 == ""
    assert LatencyTable.from_dynamic_ofa(tmp_path, tiny, "x").context == "cpu:2t"
    with pytest.raises(UserError, match="latency table is for preset 'tiny', not 'custom_test'"):
        LatencyTable.from_dynamic_ofa(tmp_path, custom_space())
    (tmp_path / "table.json").unlink()  # Dynamic-OFA's own layout: the caller names the space
    with pytest.raises(UserError, match="no table.json describing the table's search space"):
        LatencyTable.from_dynamic_ofa(tmp_path)
    assert LatencyTable.from_dynamic_ofa(tmp_path, tiny).context == tmp_path.name


def test_profile_whose_tables_are_for_different_spaces_is_refused(tmp_path):
    from dynadnn.predict.latency import load_tables

    space, tiny = custom_space(), load_space("tiny")
    LatencyTable(space, "cpu:1t", synthetic_entries(space)).save(tmp_path / "cpu_1t")
    LatencyTable(tiny, "cpu:2t", synthetic_entries(tiny)).save(tmp_path / "cpu_2t")
    assert load_tables(tmp_path, None, ["cpu:1t"])["cpu:1t"].space == space
    with pytest.raises(UserError, match=r"latency table 'cpu:2t' is for a different search space than 'cpu:1t'"):
        load_tables(tmp_path, None, ["cpu:1t", "cpu:2t"])
