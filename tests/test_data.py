"""Datasets: real data, fixed stratified split, normalisation, safe unpickling, image-folder errors."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from dynadnn.data import (SafeArrayUnpickler, animal_files, load_dataset, load_numpy_pickle, resize_batch,
                          stratified_split)
from dynadnn.errors import UserError


@pytest.fixture(scope="module")
def animals():
    return load_dataset("animals")


def test_animals_split_is_stratified_and_fixed(animals):
    assert animals.n_train == 8000 and animals.n_test == 2000
    assert animals.train_x.shape[1:] == (1, 28, 28)
    assert torch.bincount(animals.train_y).tolist() == [800] * 10
    assert torch.bincount(animals.test_y).tolist() == [200] * 10
    again = load_dataset("animals")
    assert torch.equal(again.test_x, animals.test_x) and torch.equal(again.train_y, animals.train_y)


def test_train_and_test_do_not_overlap():
    labels = np.repeat(np.arange(5), 37)
    train, test = stratified_split(labels)
    assert not set(train) & set(test) and len(train) + len(test) == len(labels)
    assert all(abs((labels[test] == c).sum() - 7.4) < 1 for c in range(5))


def test_normalised_with_training_statistics(animals):
    assert abs(float(animals.train_x.mean())) < 1e-3
    assert abs(float(animals.train_x.std()) - 1) < 1e-2
    assert abs(float(animals.test_x.mean())) < 0.1  # same distribution, other images


def test_batches_are_deterministic_given_the_generator(animals):
    a = [x for x, _ in zip(animals.train_batches(32, torch.Generator().manual_seed(3)), range(3))]
    b = [x for x, _ in zip(animals.train_batches(32, torch.Generator().manual_seed(3)), range(3))]
    c = [x for x, _ in zip(animals.train_batches(32, torch.Generator().manual_seed(4)), range(3))]
    assert all(torch.equal(u[0], v[0]) for u, v in zip(a, b))
    assert not torch.equal(a[0][0], c[0][0])


def test_augmentation_moves_pixels_but_keeps_labels(animals):
    gen = torch.Generator().manual_seed(0)
    aug = animals.augment(animals.train_x[:64], gen)
    assert aug.shape == (64, 1, 28, 28)
    diff = (aug - animals.train_x[:64]).abs().mean(dim=(1, 2, 3))
    assert (diff > 0.01).float().mean() > 0.9  # nearly every image changed
    assert float(diff.mean()) < 0.6  # but an animal is still an animal (mostly the same pixels)


def test_ddp_shards_partition_the_global_batch(animals):
    full = next(animals.train_batches(8, torch.Generator().manual_seed(1), augment=False))[1]
    r0 = next(animals.train_batches(4, torch.Generator().manual_seed(1), augment=False, shard=(0, 2)))[1]
    r1 = next(animals.train_batches(4, torch.Generator().manual_seed(1), augment=False, shard=(1, 2)))[1]
    assert torch.equal(torch.cat([r0, r1]), full)


def test_digits_load(digits):
    d = digits
    assert d.n_classes == 10 and d.train_x.shape[1:] == (1, 8, 8) and d.n_train + d.n_test == 1797


def test_resize_batch():
    x = torch.randn(2, 1, 28, 28)
    assert resize_batch(x, 20).shape == (2, 1, 20, 20) and resize_batch(x, 28) is x


def test_unknown_dataset_is_one_line_error():
    with pytest.raises(UserError, match="^data: unknown dataset 'mnist'"):
        load_dataset("mnist")
    with pytest.raises(UserError, match="^data: 'imagefolder:' names no folder"):
        load_dataset("imagefolder:")
    with pytest.raises(UserError, match="^data: expected a dataset name"):
        load_dataset(None)
    with pytest.raises(UserError, match="^workers: "):
        load_dataset("digits", workers=-1)


# --- the restricted unpickler -----------------------------------------------------------------------
def test_unpickler_reads_the_shipped_files_as_arrays():
    data, label = animal_files()
    labels = load_numpy_pickle(gzip.open(label, "rb").read(), str(label))
    assert labels.shape == (10000,) and set(np.unique(labels)) == set(range(10))


def test_unpickler_refuses_code_and_other_globals(runs_code):
    with pytest.raises(UserError, match="posix.system|os.system|not allowed"):
        load_numpy_pickle(pickle.dumps(runs_code), "evil.gz")
    assert not runs_code.marker.exists(), "the pickle ran code"
    with pytest.raises(pickle.UnpicklingError, match="collections.OrderedDict"):
        import collections, io
        SafeArrayUnpickler(io.BytesIO(pickle.dumps(collections.OrderedDict(a=1)))).load()
    arr = np.arange(6, dtype=np.int64).reshape(2, 3)
    assert np.array_equal(load_numpy_pickle(pickle.dumps(arr), "ok"), arr)
    with pytest.raises(UserError, match="expected a numpy array"):
        load_numpy_pickle(pickle.dumps([1, 2]), "list.gz")


# --- image folders ----------------------------------------------------------------------------------
def _folder(tmp_path, per_class=5, corrupt=0):
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / c / f"{i}.png")
    for i in range(corrupt):
        (tmp_path / "cat" / f"bad{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return tmp_path


def test_image_folder_transforms_and_split(tmp_path):
    d = load_dataset(f"imagefolder:{_folder(tmp_path)}", image_size=32, in_channels=3, workers=0)
    assert d.classes == ["cat", "dog"] and d.n_train == 8 and d.n_test == 2
    x, y = next(d.train_batches(4, torch.Generator().manual_seed(0)))
    assert x.shape == (4, 3, 32, 32) and y.shape == (4,)
    xt, _ = next(d.test_batches(2))
    assert xt.shape == (2, 3, 32, 32)
    assert len(d.calibration_batches(5, batch_size=5)) == 1


def test_corrupt_images_are_skipped_and_counted(tmp_path):
    d = load_dataset(f"imagefolder:{_folder(tmp_path, per_class=5, corrupt=3)}", image_size=16, workers=0)
    with pytest.warns(UserWarning, match="skipped 3 corrupt"):
        n = 0
        for ep in range(1):
            for x, _ in d.train_batches(1, torch.Generator().manual_seed(0)):
                n += x.shape[0]
            for x, _ in d.test_batches(100):
                n += x.shape[0]
    assert n == 10 and d.skipped == 3


def test_image_folder_errors(tmp_path):
    with pytest.raises(UserError, match="no such directory"):
        load_dataset(f"imagefolder:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no class sub-folders"):
        load_dataset(f"imagefolder:{tmp_path / 'empty'}")
    root = _folder(tmp_path / "one")
    (root / "zebra").mkdir()
    (root / "zebra" / "notes.txt").write_text("no images here")
    with pytest.raises(UserError, match="class 'zebra' has no images"):
        load_dataset(f"imagefolder:{root}")


def test_a_folder_of_only_corrupt_images_is_refused_when_loaded(tmp_path):
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(30):
            (tmp_path / c / f"{i}.png").write_bytes(b"\x89PNG truncated")
    with pytest.raises(UserError, match="training split: none of the 16 image\\(s\\) tried could be decoded"):
        load_dataset(f"imagefolder:{tmp_path}", workers=0)


def test_a_path_too_long_or_a_file_is_a_one_line_error(tmp_path):
    with pytest.raises(UserError, match="File name too long"):
        load_dataset(f"imagefolder:{tmp_path / ('x' * 5000)}")
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="not a directory"):
        load_dataset(f"imagefolder:{tmp_path / 'f'}")
