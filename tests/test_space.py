"""Search spaces and architectures: validation, serialisation, sampling, size and encoding."""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
import re

import numpy as np
import pytest

from dynadnn.errors import ArchError, UserError
from dynadnn.space import Arch, SearchSpace, list_presets, load_space, make_divisible

OFA_PRESETS = ("ofa_mbv3_w1.0", "ofa_mbv3_w1.2")


@pytest.fixture(scope="module")
def ofa_space() -> SearchSpace:
    return load_space("ofa_mbv3_w1.0")


def synthetic_space_dict() -> dict:
    """Two stages of up to two blocks, two kernel and two expand choices, two resolutions: small enough
    to enumerate every architecture."""
    return {
        "name": "synthetic", "in_channels": 1, "n_classes": 3,
        "first_conv": {"width": 8, "stride": 2, "act": "h_swish"},
        "first_block": {"width": 8, "stride": 1, "act": "relu"},
        "stages": [{"width": 16, "stride": 2, "act": "relu", "se": True},
                   {"width": 24, "stride": 1, "act": "h_swish"}],
        "final_expand": 32, "feature_mix": 48,
        "ks_choices": [5, 3], "e_choices": [3, 6], "d_choices": [1, 2], "resolutions": [20, 16],
    }


# --- presets -----------------------------------------------------------------------------------
def test_presets_listed_and_loadable():
    assert set(list_presets()) >= {"ofa_mbv3_w1.0", "ofa_mbv3_w1.2", "tiny"}
    for name in list_presets():
        space = load_space(name)
        assert space.name == name
        assert space.n_blocks == space.n_stages * space.max_depth


def test_ofa_presets_have_ofas_shape():
    for name, widths, head in (("ofa_mbv3_w1.0", [24, 40, 80, 112, 160], (960, 1280)),
                               ("ofa_mbv3_w1.2", [32, 48, 96, 136, 192], (1152, 1536))):
        space = load_space(name)
        assert [s.width for s in space.stages] == widths
        assert (space.final_expand, space.feature_mix) == head
        assert space.n_blocks == 20 and space.n_classes == 1000
        assert space.resolutions == tuple(range(128, 225, 4))


def test_unknown_preset_is_a_user_error_naming_the_choices():
    with pytest.raises(UserError) as info:
        load_space("ofa_mbv3_w9.9")
    msg = str(info.value)
    assert "ofa_mbv3_w9.9" in msg and all(name in msg for name in list_presets())
    assert "\n" not in msg


def test_preset_from_a_json_file_round_trips(tmp_path):
    path = tmp_path / "synthetic.json"
    path.write_text(json.dumps(synthetic_space_dict()))
    space = load_space(path)
    assert space.ks_choices == (3, 5) and space.resolutions == (16, 20)  # choices are sorted
    assert SearchSpace.from_dict(space.to_dict()) == space
    for name in list_presets():
        preset = load_space(name)
        assert SearchSpace.from_dict(json.loads(json.dumps(preset.to_dict()))) == preset


@pytest.mark.parametrize("edit, field", [
    (lambda d: d.pop("stages"), "stages"),
    (lambda d: d["stages"][1].update(act="swish"), "stages[1].act"),
    (lambda d: d.update(ks_choices=[3, 4]), "ks_choices"),
    (lambda d: d.update(first_conv=7), "first_conv"),
])
def test_bad_preset_file_names_the_field(tmp_path, edit, field):
    data = synthetic_space_dict()
    edit(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=re.escape(f"'{field}")):
        load_space(path)


def test_preset_file_that_is_not_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"name": "x",')
    with pytest.raises(UserError, match="not valid JSON"):
        load_space(path)


# --- validation ----------------------------------------------------------------------------------
@pytest.mark.parametrize("change, field, allowed", [
    (dict(e=(6,) * 19 + (2,)), "e[19]", "[3, 4, 6]"),  # OFA itself silently accepts e=2
    (dict(ks=(7,) * 3 + (4,) + (7,) * 16), "ks[3]", "[3, 5, 7]"),
    (dict(d=(4, 4, 1, 4, 4)), "d[2]", "[2, 3, 4]"),
    (dict(r=130), "r", "128..224 in steps of 4"),
    (dict(r=256), "r", "128..224"),
])
def test_validation_names_the_bad_field_and_the_allowed_values(ofa_space, change, field, allowed):
    arch = dataclasses.replace(ofa_space.max_arch(), **change)
    with pytest.raises(ArchError) as info:
        ofa_space.validate(arch)
    msg = str(info.value)
    assert f"'{field}'" in msg and allowed in msg and "ofa_mbv3_w1.0" in msg and "\n" not in msg


@pytest.mark.parametrize("field, n, expected", [("ks", 19, 20), ("e", 21, 20), ("d", 4, 5)])
def test_short_or_long_lists_are_refused(ofa_space, field, n, expected):
    arch = dataclasses.replace(ofa_space.max_arch(), **{field: (getattr(ofa_space.max_arch(), field)[0],) * n})
    with pytest.raises(ArchError, match=f"'{field}': expected {expected} values.*got {n}"):
        ofa_space.validate(arch)


def test_tiny_preset_validates_its_own_resolutions():
    tiny = load_space("tiny")
    tiny.validate(tiny.max_arch(32))
    with pytest.raises(ArchError, match=r"'r' is 224.*\[20, 24, 28, 32\]"):
        tiny.validate(tiny.max_arch(224))


@pytest.mark.parametrize("kwargs, field", [
    (dict(ks=[3.0] * 20, e=[3] * 20, d=[2] * 5, r=128), "ks"),
    (dict(ks=[3] * 20, e="3" * 20, d=[2] * 5, r=128), "e"),
    (dict(ks=[3] * 20, e=[3] * 20, d=[2] * 5, r="128"), "r"),
    (dict(ks=[3] * 20, e=[3] * 20, d=[2] * 5, r=True), "r"),
])
def test_arch_refuses_non_integer_fields(kwargs, field):
    with pytest.raises(ArchError, match=f"field '{field}'"):
        Arch(**kwargs)


def test_arch_accepts_numpy_integers_and_is_hashable(ofa_space):
    arch = Arch(np.full(20, 5), [np.int64(4)] * 20, (3,) * 5, np.int32(160))
    ofa_space.validate(arch)
    assert arch == Arch((5,) * 20, (4,) * 20, (3,) * 5, 160)
    assert isinstance(arch.r, int) and len({arch, Arch((5,) * 20, (4,) * 20, (3,) * 5, 160)}) == 1


# --- serialisation ---------------------------------------------------------------------------------
def test_json_round_trip(ofa_space):
    rng = random.Random(0)
    for _ in range(20):
        arch = ofa_space.sample(rng)
        assert Arch.from_json(arch.to_json()) == arch
        assert Arch.from_dict(json.loads(json.dumps(arch.to_dict()))) == arch


def test_ofa_dict_round_trip_and_image_size(ofa_space):
    arch = ofa_space.sample(random.Random(1), r=192)
    ofa = arch.to_ofa()
    assert ofa["r"] == [192] and len(ofa["ks"]) == 20 and len(ofa["d"]) == 5
    assert Arch.from_dict(ofa) == arch
    as_predictor_sees_it = {"ks": ofa["ks"], "e": ofa["e"], "d": ofa["d"], "image_size": 192}
    assert Arch.from_dict(as_predictor_sees_it) == arch


@pytest.mark.parametrize("data, message", [
    ({"ks": [3], "e": [3]}, "missing field.*d"),
    ({"ks": [3], "e": [3], "d": [2]}, "missing field 'r'"),
    ({"ks": [3], "e": [3], "d": [2], "r": [160, 176]}, "one resolution"),
    ([3, 3, 2], "JSON object"),
])
def test_bad_arch_dicts_name_the_problem(data, message):
    with pytest.raises(ArchError, match=message):
        Arch.from_dict(data)


def test_bad_arch_json():
    with pytest.raises(ArchError, match="not valid JSON"):
        Arch.from_json('{"ks": [3,')


def test_short_name_is_readable(ofa_space):
    name = ofa_space.min_arch().short()
    assert name.startswith("d22222-r128-k333") and "e333" in name


# --- sampling, mutation, crossover ------------------------------------------------------------------
def test_sampling_is_deterministic_given_the_rng(ofa_space):
    a = [ofa_space.sample(random.Random(42)) for _ in range(3)]
    rng1, rng2 = random.Random(7), random.Random(7)
    seq1 = [ofa_space.sample(rng1) for _ in range(10)]
    seq2 = [ofa_space.sample(rng2) for _ in range(10)]
    assert seq1 == seq2 and a[0] == a[1] == a[2]
    assert len(set(seq1)) == 10
    assert seq1 != [ofa_space.sample(random.Random(8)) for _ in range(10)]


def test_samples_stay_in_the_space_and_cover_every_choice(ofa_space):
    rng = random.Random(3)
    samples = [ofa_space.validate(ofa_space.sample(rng)) for _ in range(600)]
    ks = np.array([s.ks for s in samples])
    for k in ofa_space.ks_choices:  # uniform per choice, as OFA samples
        assert 0.30 < (ks == k).mean() < 0.37
    assert {s.r for s in samples} == set(ofa_space.resolutions)
    depths = np.array([s.d for s in samples])
    assert all(set(depths[:, stage]) == set(ofa_space.d_choices) for stage in range(ofa_space.n_stages))
    assert all(s.r == 176 for s in (ofa_space.sample(rng, r=176) for _ in range(5)))


def test_max_and_min(ofa_space):
    hi, lo = ofa_space.max_arch(), ofa_space.min_arch()
    assert (hi.ks[0], hi.e[0], hi.d[0], hi.r) == (7, 6, 4, 224)
    assert (lo.ks[0], lo.e[0], lo.d[0], lo.r) == (3, 3, 2, 128)
    assert ofa_space.max_arch(160).r == 160 and ofa_space.min_arch(160).r == 160
    ofa_space.validate(hi), ofa_space.validate(lo)


def test_mutation_stays_in_the_space(ofa_space):
    rng = random.Random(5)
    parent = ofa_space.sample(rng)
    assert ofa_space.mutate(parent, rng, prob=0.0) == parent
    children = [ofa_space.validate(ofa_space.mutate(parent, rng, prob=0.3)) for _ in range(50)]
    assert sum(c != parent for c in children) >= 45
    changed = np.mean([np.mean(np.array(c.ks) != np.array(parent.ks)) for c in children])
    assert 0.1 < changed < 0.3  # prob 0.3 of re-drawing, 2/3 of re-draws land elsewhere: ~0.2


def test_crossover_takes_every_gene_from_a_parent(ofa_space):
    rng = random.Random(6)
    a, b = ofa_space.max_arch(224), ofa_space.min_arch(128)
    for _ in range(20):
        child = ofa_space.validate(ofa_space.crossover(a, b, rng))
        for field in ("ks", "e", "d"):
            assert all(g in (x, y) for g, x, y in zip(getattr(child, field), getattr(a, field), getattr(b, field)))
        assert child.r in (224, 128)
    child = ofa_space.crossover(a, b, random.Random(0))
    assert child not in (a, b)


def test_canonical_identifies_equal_networks(ofa_space):
    arch = dataclasses.replace(ofa_space.max_arch(), d=(2, 3, 4, 2, 2))
    other = dataclasses.replace(arch, ks=arch.ks[:2] + (3, 5) + arch.ks[4:])  # inactive slots 2, 3 differ
    assert arch != other and ofa_space.canonical(arch) == ofa_space.canonical(other)
    canon = ofa_space.canonical(arch)
    assert ofa_space.canonical(canon) == canon and ofa_space.validate(canon)
    assert ofa_space.active_blocks(arch) == [0, 1, 4, 5, 6, 8, 9, 10, 11, 12, 13, 16, 17]


# --- size ---------------------------------------------------------------------------------------
def test_size_matches_a_brute_force_count():
    space = SearchSpace.from_dict(synthetic_space_dict())
    n, m = space.n_blocks, space.n_stages
    distinct = {
        space.canonical(Arch(ks, e, d, r))
        for ks in itertools.product(space.ks_choices, repeat=n)
        for e in itertools.product(space.e_choices, repeat=n)
        for d in itertools.product(space.d_choices, repeat=m)
        for r in space.resolutions
    }
    assert space.size() == len(distinct) == (4 + 16) ** 2 * 2


def test_size_of_ofa_space():
    per_stage = 9 ** 2 + 9 ** 3 + 9 ** 4  # OFA's "about 10^19" sub-networks, times 25 resolutions
    for name in OFA_PRESETS:
        assert load_space(name).size() == per_stage ** 5 * 25


# --- encoding -----------------------------------------------------------------------------------
def reference_encoding(arch: Arch) -> np.ndarray:
    """OFA's tutorial accuracy-predictor input, written from its description: [ks one-hot of the 20
    blocks | e one-hot of the 20 blocks | 8 resolution slots, index (r - 112) // 16]; blocks beyond a
    stage's depth are all zero."""
    out = np.zeros(128, dtype=np.float32)
    for stage, depth in enumerate(arch.d):
        for i in range(depth):
            b = stage * 4 + i
            out[b * 3 + (3, 5, 7).index(arch.ks[b])] = 1
            out[60 + b * 3 + (3, 4, 6).index(arch.e[b])] = 1
    out[120 + (arch.r - 112) // 16] = 1
    return out


@pytest.mark.parametrize("name", OFA_PRESETS)
def test_encoding_is_ofas_128d_layout(name):
    space = load_space(name)
    assert space.encoding_size == 128
    rng = random.Random(9)
    archs = [space.max_arch(), space.min_arch()] + [space.sample(rng) for _ in range(30)]
    many = space.encode_many(archs)
    assert many.shape == (32, 128) and many.dtype == np.float32
    for row, arch in zip(many, archs):
        np.testing.assert_array_equal(row, reference_encoding(arch))
        np.testing.assert_array_equal(space.encode(arch), row)
        assert row.sum() == 2 * sum(arch.d) + 1


def test_encoding_is_zero_beyond_depth_and_ignores_inactive_slots(ofa_space):
    arch = dataclasses.replace(ofa_space.max_arch(160), d=(2, 4, 4, 4, 3))
    v = ofa_space.encode(arch)
    for b in (2, 3, 19):  # stage 0 blocks 2-3 and stage 4 block 3 are not run
        assert not v[b * 3:b * 3 + 3].any() and not v[60 + b * 3:60 + b * 3 + 3].any()
    other = dataclasses.replace(arch, ks=arch.ks[:2] + (3, 3) + arch.ks[4:], e=arch.e[:19] + (3,))
    np.testing.assert_array_equal(ofa_space.encode(other), v)
    assert v[120 + (160 - 112) // 16] == 1


def test_tiny_encoding_uses_one_slot_per_resolution():
    tiny = load_space("tiny")
    assert tiny.encoding_size == 20 * 6 + len(tiny.resolutions)
    for i, r in enumerate(tiny.resolutions):
        assert tiny.encode(tiny.min_arch(r))[120 + i] == 1


# --- channel arithmetic ----------------------------------------------------------------------------
def test_make_divisible_matches_ofa():
    from ofa_peer import import_ofa

    import_ofa()
    from ofa.utils import make_divisible as ofa_make_divisible

    for v in [1, 3, 7.5, 12, 16 * 1.2, 20, 23.9, 40 * 1.2, 100, 112 * 1.2, 960 * 1.2, 1280 * 1.2]:
        assert make_divisible(v, 8) == ofa_make_divisible(v, 8), v
    space = load_space("ofa_mbv3_w1.2")
    assert [space.middle_width(32, e) for e in (3, 4, 6)] == [96, 128, 192]
    assert space.middle_width(136, 3) == 408 and space.se_width(408) == 104


def test_sample_sized_spans_the_space_wider_than_uniform_sampling():
    space = load_space("ofa_mbv3_w1.2")
    rng = random.Random(0)
    assert space.sample_sized(rng, level=0.0) == space.min_arch()
    assert space.sample_sized(rng, level=1.0) == space.max_arch()
    for _ in range(50):
        space.validate(space.sample_sized(rng))
    sized = [sum(space.sample_sized(rng).d) for _ in range(2000)]
    uniform = [sum(space.sample(rng).d) for _ in range(2000)]
    assert np.std(sized) > 1.3 * np.std(uniform)
    assert abs(np.mean(sized) - np.mean(uniform)) < 0.2  # same centre: level 0.5 is uniform per choice


def test_layout_walks_ofas_feature_sizes_and_widths():
    space = load_space("ofa_mbv3_w1.0")
    lay = space.layout(224)
    assert (lay.stem.fin, lay.stem.fout, lay.stem.cin, lay.stem.cout) == (224, 112, 3, 16)
    first = lay.blocks[0]
    assert (first.index, first.stage, first.fin, first.cin, first.cout, first.expands) == (0, -1, 112, 16, 16, False)
    assert first.mid(1) == 16 and first.residual
    assert len(lay.slots) == space.n_blocks and [b.index for b in lay.slots] == list(range(1, 21))
    assert [b.stage for b in lay.slots] == [space.stage_of(i) for i in range(20)]
    assert [b.fin for b in lay.slots[::4]] == [112, 56, 28, 14, 14]  # each stage's first block
    assert [b.fout for b in lay.slots[3::4]] == [56, 28, 14, 14, 7]  # later blocks keep the stage's size
    assert [b.stride for b in lay.slots[:4]] == [2, 1, 1, 1] and not lay.slots[0].residual and lay.slots[1].residual
    assert [lay.slots[4].mid(e) for e in (3, 4, 6)] == [72, 96, 144] and lay.slots[4].se_width(144) == 40
    assert (lay.final.fin, lay.final.cin, lay.final.cout, lay.mix.cout, lay.n_classes) == (7, 160, 960, 1280, 1000)
    assert lay.final.bn and not lay.mix.bn and lay.mix.fin == 1
    # only the feature sizes depend on the resolution
    small = space.layout(128)
    assert [b.fin for b in small.slots[::4]] == [64, 32, 16, 8, 8]
    strip = lambda b: dataclasses.replace(b, fin=0)  # noqa: E731
    assert [strip(b) for b in small.blocks] == [strip(b) for b in lay.blocks]
