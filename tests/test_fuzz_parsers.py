"""Fuzzing every file parser (issue 16, item 5): whatever a file holds, its reader returns or raises the
project's `UserError` (a subclass is fine), never another exception, and the CLI exits 0 or 2 without a
traceback.

Each reader starts from a valid artifact the code itself wrote (the tiny preset's space, a checkpoint, a
family, a latency table, an accuracy predictor, a shipped scenario), then:
(a) structured: hypothesis replaces fields at any depth with random JSON values (null, bools, huge,
    negative, NaN and infinite numbers, strings, lists, objects) or deletes them;
(b) safetensors: truncated at random offsets, random bytes and bits flipped (the 8-byte header length, the
    JSON header, the data);
(c) raw: random bytes, invalid UTF-8, empty files, deep nesting, JSON that is not an object.
A reader that returns is then used lightly (what any caller does next), which must not crash either.

Derandomized with no example database: CI runs the same examples every time.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynadnn.errors import UserError
from dynadnn.family import Family, Member
from dynadnn.predict.accuracy import AccuracyPredictor
from dynadnn.predict.latency import Correction, LatencyTable, load_tables, space_layers
from dynadnn.runtime.scenario import load_scenario
from dynadnn.space import Arch, SearchSpace, load_space
from dynadnn.supernet import SuperNet
from dynadnn.supernet.checkpoint import load_checkpoint, read_checkpoint_meta, save_checkpoint

TINY = load_space("tiny")
SCENARIOS = Path(load_scenario.__code__.co_filename).parents[1] / "scenarios"
CONTEXT = "cpu:1t"


def fuzz(n: int) -> settings:
    """`n` examples (times $DYNADNN_FUZZ_SCALE, for a longer hunt by hand), derandomized, no database."""
    n *= int(os.environ.get("DYNADNN_FUZZ_SCALE", "1"))
    return settings(max_examples=n, deadline=None, derandomize=True, database=None, print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


# --- strategies --------------------------------------------------------------------------------------
NUMBERS = st.one_of(st.integers(), st.integers(min_value=-2 ** 80, max_value=2 ** 80),
                    st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0, -1, 1, 2, 3, 7, 2 ** 31, 10 ** 9, 1e308, -0.0, 0.5, 1e-300]))
LEAVES = st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=12))
JSON = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                         max_size=4), max_leaves=8)
RAW = st.one_of(
    st.binary(max_size=80), st.text(max_size=40).map(str.encode), JSON.map(lambda v: json.dumps(v).encode()),
    st.sampled_from([b"", b"\xff\xfe\x00\x01", b'{"a": "\xff"}', b"null", b"[]", b"1e999", b"NaN", b'"text"',
                     b"{", b"[" * 100_000, b'{"a": ' * 50_000, b"1" * 5000, b'{"x": ' + b"9" * 5000 + b"}",
                     b"\x00" * 16, b"\xef\xbb\xbf{}"]),
)


def _paths(doc: Any, prefix: tuple = ()) -> Iterator[tuple]:
    if prefix:
        yield prefix
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for key, value in items:
        yield from _paths(value, prefix + (key,))


def _children(node: Any) -> list:
    return list(node) if isinstance(node, dict) else list(range(len(node))) if isinstance(node, list) else []


@st.composite
def _walk(draw, doc: Any) -> tuple:
    """A path found by walking down from the root (each key of a level alike, so that a small field weighs
    as much as a big sibling), stopping at a random depth."""
    where, node = (), doc
    while _children(node):
        key = draw(st.sampled_from(_children(node)))
        where, node = where + (key,), node[key]
        if not _children(node) or draw(st.booleans()):
            break
    return where


@st.composite
def mutated(draw, doc: dict) -> dict:
    """`doc` with 1-3 fields, at any depth, replaced by random JSON values or deleted."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(doc))
        if not paths:
            break
        where = draw(st.sampled_from(paths) | _walk(doc))
        if not where:
            break
        parent = doc
        for key in where[:-1]:
            parent = parent[key]
        if draw(st.integers(0, 3)) == 0:
            parent.pop(where[-1])
        else:
            parent[where[-1]] = draw(JSON)
    return doc


@st.composite
def damaged(draw, raw: bytes) -> bytes:
    """A safetensors file with bytes or bits flipped (in its header length, JSON header or anywhere) and/or
    truncated at a random offset."""
    header_end = min(8 + int.from_bytes(raw[:8], "little"), len(raw))
    data = bytearray(raw)
    for _ in range(draw(st.integers(0, 4))):
        lo, hi = draw(st.sampled_from([(0, 8), (8, header_end), (0, len(data))]))
        pos = draw(st.integers(lo, hi - 1))
        data[pos] = draw(st.integers(0, 255)) if draw(st.booleans()) else data[pos] ^ (1 << draw(st.integers(0, 7)))
    if draw(st.booleans()) or data == bytearray(raw):
        data = data[:draw(st.integers(0, len(data) - 1))]
    return bytes(data)


# --- helpers -----------------------------------------------------------------------------------------
@contextmanager
def workdir(template: Path | None = None) -> Iterator[Path]:
    """A fresh folder per example (a copy of `template` when given), removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="fuzz."))
    try:
        work = root / "w"
        if template is not None:
            shutil.copytree(template, work)
        else:
            work.mkdir()
        yield work
    finally:
        shutil.rmtree(root, ignore_errors=True)


def reads_or_refuses(read: Callable[[], Any], use: Callable[[Any], Any] = lambda x: None) -> Any:
    """`read()` then `use(result)`: returning or raising UserError (one line) are both fine; anything else fails."""
    try:
        return use(read())
    except UserError as exc:
        assert "\n" not in str(exc).strip(), f"a {type(exc).__name__} of more than one line: {str(exc)[:300]!r}"
        return None


def write_json(path: Path, doc: Any) -> None:
    path.write_text(json.dumps(doc))


def with_metadata(raw: bytes, metadata: dict[str, str]) -> bytes:
    """The safetensors file `raw` with its header's `__metadata__` replaced (tensor data untouched)."""
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + raw[8 + n:]


# --- valid artifacts, written once by the code itself ------------------------------------------------
@pytest.fixture(scope="module")
def art(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("artifacts")
    torch.manual_seed(0)
    net = SuperNet(TINY).eval()
    save_checkpoint(net, root / "ckpt.safetensors", {"data": "digits"})
    _family(net).save(root / "family")
    nosha = root / "family_nosha"
    shutil.copytree(root / "family", nosha)
    doc = json.loads((nosha / "family.json").read_text())
    doc.pop("weights_sha256")
    write_json(nosha / "family.json", doc)
    _table().save(root / "profile" / "cpu_1t")
    AccuracyPredictor(TINY, hidden=(8,)).save(root / "predictor")
    write_json(root / "space.json", TINY.to_dict())
    shutil.copy(SCENARIOS / "contention.json", root / "scenario.json")
    return {p.name: p for p in root.iterdir()}


def _family(net: SuperNet) -> Family:
    rng = random.Random(0)
    x = torch.randn(8, 1, 32, 32)
    members = []
    for i, arch in enumerate([TINY.min_arch(24), TINY.sample(rng, 28), TINY.max_arch(32)]):
        stats = net.calibrate_bn(arch, [torch.nn.functional.interpolate(x, size=arch.r)])
        members.append(Member(arch, stats, 80.0 + i, 79.0 + i, {CONTEXT: 4.0 + 3 * i},
                              {CONTEXT: {"median": 4.1 + 3 * i, "p95": 4.5 + 3 * i}}, 1000 * (i + 1), 500 * (i + 1)))
    archive = [{"arch": m.arch.to_dict(), "top1_predicted": m.top1_predicted,
                "latency_predicted_ms": dict(m.latency_predicted_ms)} for m in members[:2]]
    return Family("tiny", [CONTEXT], members, "", "", archive, {"test": True})


def _table() -> LatencyTable:
    entries = {}
    for r in (20, 24):
        sl = space_layers(TINY, r)
        layers = list(sl.fixed) + [layer for per_k in sl.blocks for per_e in per_k for layer in per_e]
        entries[r] = {layer.key: {"count": 3, "mean": 0.01 * (i % 7 + 1), "std": 0.001} for i, layer in enumerate(layers)}
    return LatencyTable(TINY, CONTEXT, entries, "table", Correction(1.1, 0.01, 0.02, {24: -0.01}))


# --- readers and what a caller does next ---------------------------------------------------------------
def use_space(space: SearchSpace) -> None:
    for r in space.resolutions[:2]:
        space.layout(r)
    space.encode(space.min_arch())
    space.validate(space.max_arch())


def read_family(directory: Path) -> None:
    def use(fam: Family) -> None:  # what a family loads with is finite, latencies and counts not negative
        for m in fam.members:
            assert m.top1 is None or math.isfinite(m.top1), m.top1
            assert all(math.isfinite(m.latency(c, s)) and m.latency(c, s) >= 0 for c in fam.contexts
                       for s in (("median", "p95") if c in m.latency_ms else ("median",))), m.latency_ms
            assert m.macs >= 0 and m.params >= 0
        fam.sort()

    reads_or_refuses(lambda: Family.load(directory), use)


def read_table(directory: Path) -> None:
    def use(table: LatencyTable) -> None:  # layer means finite and not negative, the correction finite
        assert np.isfinite(table.block_ms).all() and (table.block_ms >= 0).all() and (table.fixed_ms >= 0).all()
        if table.correction is not None:
            c = table.correction
            assert all(math.isfinite(v) for v in (c.a, c.b, c.c, *c.offsets.values())), c
        table.fastest()
        assert np.isfinite(table.predict(table.space.min_arch(table.resolutions[0]))).all()

    reads_or_refuses(lambda: LatencyTable.from_dynamic_ofa(directory), use)
    reads_or_refuses(lambda: load_tables(directory.parent, None, [CONTEXT]))


def read_predictor(directory: Path) -> None:
    reads_or_refuses(lambda: AccuracyPredictor.load(directory), lambda p: p.predict(p.space.min_arch()))


def read_checkpoint(path: Path) -> None:
    reads_or_refuses(lambda: read_checkpoint_meta(path))
    reads_or_refuses(lambda: load_checkpoint(path), lambda out: out[0].space.validate(out[0].space.min_arch()))


def read_scenario(path: Path) -> None:
    def use(sc: Any) -> None:
        assert all(math.isfinite(p.duration) and p.duration > 0 for p in sc.phases), sc
        sc.boundaries(1.0), sc.heaviest()

    reads_or_refuses(lambda: load_scenario(path), use)


# --- (a) structured fuzzing ------------------------------------------------------------------------------
@fuzz(60)
@given(st.data())
def test_space_preset_fields(art, data):
    doc = data.draw(mutated(TINY.to_dict()))
    with workdir() as w:
        write_json(w / "space.json", doc)
        reads_or_refuses(lambda: load_space(str(w / "space.json")), use_space)
    reads_or_refuses(lambda: SearchSpace.from_dict(doc), use_space)


@fuzz(40)
@given(st.data())
def test_arch_fields(data):
    doc = data.draw(mutated(TINY.sample(random.Random(1)).to_dict()))
    reads_or_refuses(lambda: TINY.validate(Arch.from_dict(doc)), TINY.encode)
    reads_or_refuses(lambda: Arch.from_json(json.dumps(doc)))


@fuzz(40)
@given(st.data())
def test_checkpoint_metadata_fields(art, data):
    raw = art["ckpt.safetensors"].read_bytes()
    meta = read_checkpoint_meta(art["ckpt.safetensors"])
    doc = data.draw(mutated(meta))
    with workdir() as w:
        (w / "c.safetensors").write_bytes(with_metadata(raw, {"dynadnn": json.dumps(doc)}))
        read_checkpoint(w / "c.safetensors")


def read_mutated_json(data, artifact, name: str, read) -> None:
    """A copy of the `artifact` folder with its JSON file `name` mutated, then `read` on the file's folder."""
    doc = data.draw(mutated(json.loads((artifact / name).read_text())))
    with workdir(artifact) as w:
        write_json(w / name, doc)
        read((w / name).parent)


@fuzz(50)
@given(st.data())
def test_family_json_fields(art, data):
    read_mutated_json(data, art["family"], "family.json", read_family)


@fuzz(40)
@given(st.data())
def test_latency_table_fields(art, data):
    name = data.draw(st.sampled_from(["table.json", "20_lookup_table.json", "24_lookup_table.json"]))
    read_mutated_json(data, art["profile"], f"cpu_1t/{name}", read_table)


@fuzz(40)
@given(st.data())
def test_predictor_json_fields(art, data):
    read_mutated_json(data, art["predictor"], "predictor.json", read_predictor)


@fuzz(50)
@given(st.data())
def test_scenario_fields(art, data):
    doc = data.draw(mutated(json.loads(art["scenario.json"].read_text())))
    with workdir() as w:
        write_json(w / "s.json", doc)
        read_scenario(w / "s.json")


# --- (b) damaged safetensors ------------------------------------------------------------------------------
@fuzz(40)
@given(st.data())
def test_damaged_checkpoint(art, data):
    blob = data.draw(damaged(art["ckpt.safetensors"].read_bytes()))
    with workdir() as w:
        (w / "c.safetensors").write_bytes(blob)
        read_checkpoint(w / "c.safetensors")


@fuzz(40)
@given(st.data())
def test_damaged_family_weights(art, data):
    template = art[data.draw(st.sampled_from(["family", "family_nosha"]))]
    blob = data.draw(damaged((template / "family.safetensors").read_bytes()))
    with workdir(template) as w:
        (w / "family.safetensors").write_bytes(blob)
        read_family(w)


@fuzz(30)
@given(st.data())
def test_damaged_predictor_weights(art, data):
    blob = data.draw(damaged((art["predictor"] / "predictor.safetensors").read_bytes()))
    with workdir(art["predictor"]) as w:
        (w / "predictor.safetensors").write_bytes(blob)
        read_predictor(w)


# --- (c) raw bytes in every JSON file ---------------------------------------------------------------------
@fuzz(30)
@given(RAW)
def test_raw_bytes_space_and_scenario(art, blob):
    with workdir() as w:
        (w / "x.json").write_bytes(blob)
        reads_or_refuses(lambda: load_space(str(w / "x.json")), use_space)
        read_scenario(w / "x.json")
    reads_or_refuses(lambda: Arch.from_json(blob.decode("utf-8", "replace")))


@fuzz(40)
@given(RAW, st.sampled_from(["family/family.json", "profile/cpu_1t/table.json",
                             "profile/cpu_1t/20_lookup_table.json", "predictor/predictor.json"]))
def test_raw_bytes_artifact_json(art, blob, name):
    top, _, rest = name.partition("/")
    with workdir(art[top]) as w:
        (w / rest).write_bytes(blob)
        {"family": read_family, "profile": lambda d: read_table(d / "cpu_1t"), "predictor": read_predictor}[top](w)


@fuzz(30)
@given(RAW)
def test_raw_checkpoint_metadata(art, blob):
    raw = art["ckpt.safetensors"].read_bytes()
    with workdir() as w:
        (w / "c.safetensors").write_bytes(with_metadata(raw, {"dynadnn": blob.decode("utf-8", "replace")}))
        read_checkpoint(w / "c.safetensors")
        (w / "r.safetensors").write_bytes(blob)
        read_checkpoint(w / "r.safetensors")


# --- the CLI on fuzzed files ---------------------------------------------------------------------------
def _bad_checkpoints(art: dict[str, Path], w: Path) -> list[Path]:
    raw = art["ckpt.safetensors"].read_bytes()
    meta = read_checkpoint_meta(art["ckpt.safetensors"])
    cases = {"truncated": raw[:len(raw) // 2], "header_length": b"\xff" * 8 + raw[8:],
             "space_5": with_metadata(raw, {"dynadnn": json.dumps({**meta, "space": 5})}),
             "ks_text": with_metadata(raw, {"dynadnn": json.dumps({**meta, "space": {**meta["space"],
                                                                                      "ks_choices": "3,5,7"}})}),
             "meta_not_json": with_metadata(raw, {"dynadnn": "{"}), "random": bytes(range(256)) * 4}
    for name, blob in cases.items():
        (w / f"{name}.safetensors").write_bytes(blob)
    return [w / f"{name}.safetensors" for name in cases]


def _bad_families(art: dict[str, Path], w: Path) -> list[Path]:
    doc = json.loads((art["family"] / "family.json").read_text())
    edits = {"macs_text": ("members", 0, "macs", "many"), "top1_nan": ("members", 1, "top1_measured", float("nan")),
             "latency_neg": ("members", 0, "latency_ms", CONTEXT, "median", -4.0), "space_5": ("space", 5),
             "contexts_num": ("contexts", 3)}
    out = []
    for name, (*where, value) in edits.items():
        fam = copy.deepcopy(doc)
        node = fam
        for key in where[:-1]:
            node = node[key]
        node[where[-1]] = value
        shutil.copytree(art["family"], w / name)
        write_json(w / name / "family.json", fam)
        out.append(w / name)
    shutil.copytree(art["family_nosha"], w / "weights_cut")
    blob = (w / "weights_cut" / "family.safetensors").read_bytes()
    (w / "weights_cut" / "family.safetensors").write_bytes(blob[:len(blob) // 3])
    shutil.copytree(art["family"], w / "json_bytes")
    (w / "json_bytes" / "family.json").write_bytes(b"\xff\xfe{")
    return out + [w / "weights_cut", w / "json_bytes"]


def _bad_scenarios(w: Path) -> list[Path]:
    texts = {"nan": '{"phases": [{"duration": NaN}]}', "inf": '{"phases": [{"duration": Infinity}]}',
             "extra_field": '{"phases": [{"duration": 1, "competitors": [{"kind": "busy"}]}], "x": [' + "1," * 10 + "1]}",
             "flood": '{"phases": [{"duration": 1, "competitors": ' + json.dumps([{"kind": "busy"}] * 1000) + "}]}",
             "empty": "", "bytes": "\udcff"}
    for name, text in texts.items():
        (w / f"{name}.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    return [w / f"{name}.json" for name in texts]


def test_cli_on_fuzzed_files_exits_0_or_2_without_traceback(art, tmp_path, capsys):
    from dynadnn.cli import main

    families = _bad_families(art, tmp_path)
    quick = ["--duration", "0.1", "--threads", "1", "--backends", "torch", "--dataset", "digits",
             "--calib-images", "50", "--calibrate-s", "0.1", "--members", "2"]
    argvs = [["eval", str(c), "--data", "digits", "--subnets", "min", "--no-calibrate"]
             for c in _bad_checkpoints(art, tmp_path)]
    argvs += [["plot-front", str(f), "--out", str(tmp_path / "front.png")] for f in families]
    argvs += [["run", str(f), "--scenario", "contention", *quick, "--out", str(tmp_path / "run")] for f in families[:3]]
    argvs += [["run", str(art["family"]), "--scenario", str(s), *quick, "--out", str(tmp_path / "run")]
              for s in _bad_scenarios(tmp_path)]
    for argv in argvs:
        capsys.readouterr()
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse
            code = exc.code
        err = capsys.readouterr().err.strip()
        assert code in (0, 2), f"{argv}: exit {code}: {err[-500:]}"
        assert "Traceback" not in err, f"{argv}: {err[-500:]}"
        if code == 2:  # `run` logs its progress to stderr before it meets the bad file: its last line
            assert err.splitlines()[-1].startswith("dynadnn: error:"), f"{argv}: {err[-500:]}"
        shutil.rmtree(tmp_path / "run", ignore_errors=True)
