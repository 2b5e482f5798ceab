"""The shipped embedded-default model: listed, loadable as zoo:animals, small, and as accurate as recorded."""

from __future__ import annotations

import pytest

from dynadnn.data import load_dataset
from dynadnn.errors import CheckpointError
from dynadnn.evaluate import evaluate_members
from dynadnn.supernet import load_checkpoint
from dynadnn.zoo import list_models, model_card, zoo_path


def test_animals_is_listed_with_its_card():
    assert "animals" in list_models()
    card = model_card("animals")
    assert card["preset"] == "tiny" and card["data"] == "animals"
    assert card["train"]["command"].startswith("dynadnn train")
    assert zoo_path("animals").stat().st_size <= 10 * 1024 * 1024


def test_unknown_model_is_a_one_line_error():
    with pytest.raises(CheckpointError, match="zoo:nope: no such shipped model .*zoo:animals"):
        load_checkpoint("zoo:nope")


def test_shipped_model_reproduces_its_recorded_accuracy():
    """Re-evaluate max and min (BN-calibrated on training images, test split) against the card."""
    net, meta = load_checkpoint("zoo:animals")
    card = model_card("animals")
    data = load_dataset("animals")
    rows = evaluate_members(net, data, [("max", net.space.max_arch()), ("min", net.space.min_arch())])
    for row in rows:
        assert row["top1"] == pytest.approx(card["metrics"][f"top1_{row['name']}"], abs=0.5), row
    assert meta["steps"] == card["train"]["steps"]
