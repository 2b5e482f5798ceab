"""Datasets for training, BN calibration and evaluation.

Three sources, named by a spec string:

- `animals`: animal-mnist 0.4 (10,000 real 28x28 grey-scale animal silhouettes, 10 balanced classes), the
  embedded default. Its data ships as two gzipped numpy pickles inside the package; we locate them with
  `importlib.resources` (its loader module imports tensorflow) and read them with `SafeArrayUnpickler`,
  which only rebuilds numpy arrays and refuses any other global, so a tampered file cannot run code.
- `digits`: scikit-learn's 8x8 digits (1,797 images): tiny and fast, for tests.
- `imagefolder:PATH`: one sub-folder per class (ImageNet's layout), decoded with Pillow and transformed the
  way OFA does (train: random-resized-crop + flip; test: resize to r/0.875, centre crop), normalised with
  ImageNet's mean/std. Corrupt images are skipped and counted, not fatal.

Small sets live in memory as tensors, split once by a fixed seed (stratified, so every class keeps its
share in both halves) and normalised with the training half's mean/std; their augmentation (small random
shifts, rotations and flips) runs batched on tensors with one `grid_sample`, so a batch costs well under a
millisecond and training stays compute-bound.
"""

from __future__ import annotations

import gzip
import io
import math
import pickle
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import UserError
from .validate import count

SPLIT_SEED = 0  # the train/test split never depends on the training seed: every model sees the same test set
TEST_FRACTION = 0.2
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
DATASETS = ("animals", "digits", "imagefolder:PATH")


# ----------------------------------------------------------------------------------------------------
# Reading numpy pickles without running code
# ----------------------------------------------------------------------------------------------------
def _numpy_globals() -> dict[tuple[str, str], object]:
    from numpy._core.multiarray import _reconstruct, scalar

    allowed = {}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = _reconstruct
        allowed[(mod, "scalar")] = scalar
    for mod in ("numpy", ):
        allowed[(mod, "ndarray")] = np.ndarray
        allowed[(mod, "dtype")] = np.dtype
    return allowed


class SafeArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays (and plain containers) only: `find_class` returns numpy's own array-rebuild
    functions from an allow-list and refuses every other global, which is what would let a pickle run code."""

    _allowed = _numpy_globals()

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle hook
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed (only numpy arrays)") from None


def load_numpy_pickle(raw: bytes, source: str) -> np.ndarray:
    """A numpy array from pickle bytes, via `SafeArrayUnpickler`; one-line `UserError` otherwise."""
    try:
        obj = SafeArrayUnpickler(io.BytesIO(raw)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise UserError(f"{source}: refusing to read: {exc}") from None
    if not isinstance(obj, np.ndarray):
        raise UserError(f"{source}: expected a numpy array, got {type(obj).__name__}")
    return obj


# ----------------------------------------------------------------------------------------------------
# In-memory datasets
# ----------------------------------------------------------------------------------------------------
@dataclass
class Augment:
    """Random affine jitter for small images, applied to a whole batch at once."""

    shift: float = 0.1  # fraction of the image side
    degrees: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    flip: bool = False

    def __call__(self, x: Tensor, gen: torch.Generator) -> Tensor:
        n = x.shape[0]
        u = torch.rand(n, 4, generator=gen)
        angle = (u[:, 0] * 2 - 1) * math.radians(self.degrees)
        scale = self.scale[0] + u[:, 1] * (self.scale[1] - self.scale[0])
        tx, ty = (u[:, 2] * 2 - 1) * self.shift * 2, (u[:, 3] * 2 - 1) * self.shift * 2  # grid spans [-1, 1]
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        sx = torch.ones(n)
        if self.flip:
            sx = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
        theta = torch.stack([torch.stack([cos * sx, -sin, tx], 1), torch.stack([sin * sx, cos, ty], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        # padding with the border keeps the (normalised) background value instead of inventing zeros
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


@dataclass
class TensorData:
    """A dataset held in memory as normalised float tensors (N, C, H, W), split into train and test."""

    name: str
    classes: list[str]
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    mean: list[float]
    std: list[float]
    augment: Augment | None = None
    skipped: int = 0

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[-1])

    @property
    def n_train(self) -> int:
        return int(self.train_x.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.test_x.shape[0])

    def describe(self) -> dict:
        return {"name": self.name, "n_train": self.n_train, "n_test": self.n_test, "classes": self.classes,
                "image_size": self.image_size, "in_channels": self.in_channels, "mean": self.mean, "std": self.std,
                "split_seed": SPLIT_SEED, "test_fraction": TEST_FRACTION}

    def train_batches(self, batch_size: int, gen: torch.Generator, augment: bool = True,
                      shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[Tensor, Tensor]]:
        """One epoch of shuffled full batches (the ragged tail is dropped). `shard=(rank, world)` gives each
        distributed rank its own slice of every global batch of `batch_size * world` images; all ranks
        must pass generators in the same state so they agree on the permutation."""
        rank, world = shard
        order = torch.randperm(self.n_train, generator=gen)
        step = batch_size * world
        for start in range(0, self.n_train - step + 1, step):
            idx = order[start + rank * batch_size: start + (rank + 1) * batch_size]
            x = self.train_x[idx]
            if augment and self.augment is not None:
                x = self.augment(x, gen)
            yield x, self.train_y[idx]

    def test_batches(self, batch_size: int = 500) -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(0, self.n_test, batch_size):
            yield self.test_x[start:start + batch_size], self.test_y[start:start + batch_size]

    def calibration_batches(self, n_images: int = 2000, batch_size: int = 200, seed: int = 0) -> list[Tensor]:
        """A fixed random subset of *training* images (OFA calibrates BN on training data), un-augmented."""
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randperm(self.n_train, generator=gen)[:min(n_images, self.n_train)]
        return [self.train_x[idx[i:i + batch_size]] for i in range(0, len(idx), batch_size)]


def stratified_split(labels: np.ndarray, test_fraction: float = TEST_FRACTION,
                     seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices: each class is shuffled with `seed` and its first `test_fraction` goes to test."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_test = int(round(len(idx) * test_fraction))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def tensor_dataset(name: str, images: np.ndarray, labels: np.ndarray, classes: list[str],
                   augment: Augment | None) -> TensorData:
    """Split, scale to [0, 1], normalise with the training half's per-channel mean/std."""
    if images.ndim == 3:
        images = images[:, None]
    train_idx, test_idx = stratified_split(labels)
    x = torch.from_numpy(np.ascontiguousarray(images)).float()
    if images.dtype == np.uint8:
        x = x / 255.0
    y = torch.from_numpy(labels.astype(np.int64))
    xtr = x[train_idx]
    mean = xtr.mean(dim=(0, 2, 3))
    std = xtr.std(dim=(0, 2, 3)).clamp_min(1e-6)
    norm = lambda t: ((t - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)).contiguous()  # noqa: E731
    return TensorData(name, classes, norm(xtr), y[train_idx], norm(x[test_idx]), y[test_idx],
                      [float(v) for v in mean], [float(v) for v in std], augment)


def animal_files() -> tuple[Path, Path]:
    """The data and label files inside the installed animal-mnist package (its loader is never imported)."""
    try:
        root = resources.files("animal_mnist.data").joinpath("Animal_MNIST")
    except ModuleNotFoundError:
        raise UserError("dataset 'animals' needs the animal-mnist package: "
                        "pip install --no-deps animal-mnist==0.4") from None
    data, label = root.joinpath("animal_data_version_3.gz"), root.joinpath("animal_label_version_3.gz")
    for f in (data, label):
        if not f.is_file():
            raise UserError(f"dataset 'animals': {f} is missing from the animal-mnist package (expected version 0.4)")
    return Path(str(data)), Path(str(label))


def load_animals() -> TensorData:
    data_path, label_path = animal_files()
    images = load_numpy_pickle(gzip.open(data_path, "rb").read(), str(data_path))
    labels = load_numpy_pickle(gzip.open(label_path, "rb").read(), str(label_path))
    if images.ndim != 3 or images.shape[0] != labels.shape[0]:
        raise UserError(f"{data_path}: expected N x 28 x 28 images matching {labels.shape[0]} labels, got {images.shape}")
    classes = [str(c) for c in np.unique(labels)]
    return tensor_dataset("animals", images, labels.astype(np.int64), classes,
                          Augment(shift=0.08, degrees=10.0, scale=(0.9, 1.1), flip=True))


def load_digits() -> TensorData:
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    images = (d.images / 16.0).astype(np.float32)
    return tensor_dataset("digits", images, d.target.astype(np.int64), [str(c) for c in d.target_names],
                          Augment(shift=0.08, degrees=8.0, scale=(0.95, 1.05), flip=False))


# ----------------------------------------------------------------------------------------------------
# Image folders (ImageNet layout), decoded on the fly
# ----------------------------------------------------------------------------------------------------
def _shown(path: Path) -> str:
    text = str(path)
    return text if len(text) <= 120 else text[:60] + "..." + text[-40:]


def scan_image_folder(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Classes (sorted sub-folder names) and (file, class) pairs; one-line errors for unusable folders."""
    try:
        is_dir = root.is_dir()
    except OSError as exc:
        raise UserError(f"imagefolder:{_shown(root)}: cannot read it ({exc.strerror or exc})") from None
    if not is_dir:
        what = "not a directory" if root.exists() else "no such directory"
        raise UserError(f"imagefolder:{_shown(root)}: {what} (expected one folder of images per class)")
    try:
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as exc:
        raise UserError(f"imagefolder:{root}: cannot read the directory ({exc.strerror})") from None
    if not classes:
        raise UserError(f"imagefolder:{root}: no class sub-folders (expected one folder of images per class)")
    samples = []
    for i, c in enumerate(classes):
        try:
            files = sorted(p for p in (root / c).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        except OSError as exc:
            raise UserError(f"imagefolder:{root / c}: cannot read the directory ({exc.strerror})") from None
        if not files:
            raise UserError(f"imagefolder:{root / c}: class '{c}' has no images "
                            f"(expected files ending in {', '.join(sorted(IMAGE_SUFFIXES))})")
        samples += [(f, i) for f in files]
    return classes, samples


def _to_tensor(img, mode: str) -> Tensor:
    img = img.convert(mode)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def random_resized_crop(img, size: int, rng: np.random.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop (what OFA trains with), on a PIL image."""
    from PIL import Image

    w, h = img.size
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            return img.resize((size, size), Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
    side = min(w, h)  # fallback: central crop
    x0, y0 = (w - side) // 2, (h - side) // 2
    return img.resize((size, size), Image.BILINEAR, box=(x0, y0, x0 + side, y0 + side))


def resize_center_crop(img, size: int, crop_ratio: float = 0.875):
    """OFA's test transform: resize the short side to size/0.875, then take the central size x size."""
    from PIL import Image

    w, h = img.size
    short = int(math.ceil(size / crop_ratio))
    nw, nh = (short, max(short, round(h * short / w))) if w <= h else (max(short, round(w * short / h)), short)
    img = img.resize((nw, nh), Image.BILINEAR)
    x0, y0 = (nw - size) // 2, (nh - size) // 2
    return img.crop((x0, y0, x0 + size, y0 + size))


class _FolderItems(torch.utils.data.Dataset):
    """Decodes one image; returns None for a corrupt file so the batch drops it (and counts it)."""

    def __init__(self, samples, size, train, mode, mean, std, seed):
        self.samples, self.size, self.train, self.mode = samples, size, train, mode
        self.mean, self.std, self.seed = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1), seed
        self.epoch = 0

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        from PIL import Image, UnidentifiedImageError

        path, label = self.samples[i]
        try:
            with Image.open(path) as img:
                img.load()
                if self.train:
                    rng = np.random.default_rng((self.seed, self.epoch, i))
                    img = random_resized_crop(img, self.size, rng)
                    if rng.random() < 0.5:
                        img = img.transpose(Image.FLIP_LEFT_RIGHT)
                else:
                    img = resize_center_crop(img, self.size)
                x = _to_tensor(img, self.mode)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            return None
        return (x - self.mean) / self.std, label


def _decodable(path: Path) -> bool:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
        return True
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return False


def check_decodable(samples: list, source: str, tries: int = 16) -> None:
    """Refuse a split none of whose images decodes (it would train on nothing): up to `tries` images spread
    over it are decoded; some corrupt images among good ones are skipped later, with a warning."""
    picks = sorted({i * len(samples) // tries for i in range(tries)} if len(samples) > tries else range(len(samples)))
    if picks and not any(_decodable(samples[i][0]) for i in picks):
        raise UserError(f"{source}: none of the {len(picks)} image(s) tried could be decoded (corrupt, or not "
                        "images): nothing to train or evaluate on")


def _collate(items):
    good = [it for it in items if it is not None]
    bad = len(items) - len(good)
    if not good:
        return None, None, bad
    return torch.stack([g[0] for g in good]), torch.tensor([g[1] for g in good]), bad


@dataclass
class FolderData:
    """Class-per-folder images, decoded with Pillow by `workers` processes."""

    name: str
    classes: list[str]
    train_samples: list
    test_samples: list
    image_size: int
    in_channels: int
    mean: list[float]
    std: list[float]
    workers: int = 2
    skipped: int = 0
    _warned: set = field(default_factory=set)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def n_train(self) -> int:
        return len(self.train_samples)

    @property
    def n_test(self) -> int:
        return len(self.test_samples)

    def describe(self) -> dict:
        return {"name": self.name, "n_train": self.n_train, "n_test": self.n_test, "classes": self.classes,
                "image_size": self.image_size, "in_channels": self.in_channels, "mean": self.mean, "std": self.std,
                "split_seed": SPLIT_SEED, "test_fraction": TEST_FRACTION}

    def _loader(self, samples, batch_size, train, shuffle_gen=None, seed=0, epoch=0):
        items = _FolderItems(samples, self.image_size, train, "L" if self.in_channels == 1 else "RGB",
                             self.mean, self.std, seed)
        items.epoch = epoch
        sampler = None
        if shuffle_gen is not None:
            sampler = torch.randperm(len(samples), generator=shuffle_gen).tolist()
        return torch.utils.data.DataLoader(items, batch_size=batch_size, sampler=sampler, num_workers=self.workers,
                                           collate_fn=_collate, drop_last=train)

    def _batches(self, loader, what: str):
        for x, y, bad in loader:
            if bad:
                self.skipped += bad
            if x is not None:
                yield x, y
        if self.skipped and what not in self._warned:
            self._warned.add(what)
            warnings.warn(f"{self.name}: skipped {self.skipped} corrupt or unreadable image(s)", stacklevel=2)

    def train_batches(self, batch_size: int, gen: torch.Generator, augment: bool = True,
                      shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[Tensor, Tensor]]:
        rank, world = shard
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
        order = torch.randperm(self.n_train, generator=gen)
        n = self.n_train // (batch_size * world) * batch_size * world
        mine = [self.train_samples[int(i)] for i in order[:n].view(-1, world, batch_size)[:, rank].flatten()]
        yield from self._batches(self._loader(mine, batch_size, augment, None, seed), "train")

    def test_batches(self, batch_size: int = 100) -> Iterator[tuple[Tensor, Tensor]]:
        yield from self._batches(self._loader(self.test_samples, batch_size, False), "test")

    def calibration_batches(self, n_images: int = 2000, batch_size: int = 100, seed: int = 0) -> list[Tensor]:
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randperm(self.n_train, generator=gen)[:min(n_images, self.n_train)].tolist()
        subset = [self.train_samples[i] for i in idx]
        return [x for x, _ in self._batches(self._loader(subset, batch_size, False), "calibration")]


def load_image_folder(path: str, image_size: int = 224, in_channels: int = 3, workers: int = 2) -> FolderData:
    """`PATH/train` and `PATH/val` if both exist (ImageNet), else one folder split 80/20 by the fixed seed."""
    root = Path(path).expanduser()
    try:
        split = (root / "train").is_dir() and (root / "val").is_dir()
    except OSError as exc:
        raise UserError(f"imagefolder:{_shown(root)}: cannot read it ({exc.strerror or exc})") from None
    if split:
        classes, train = scan_image_folder(root / "train")
        val_classes, test = scan_image_folder(root / "val")
        if val_classes != classes:
            raise UserError(f"imagefolder:{root}: train/ and val/ have different class folders")
    else:
        classes, samples = scan_image_folder(root)
        train_idx, test_idx = stratified_split(np.array([c for _, c in samples]))
        train, test = [samples[i] for i in train_idx], [samples[i] for i in test_idx]
    check_decodable(train, f"imagefolder:{_shown(root)}: training split")
    check_decodable(test, f"imagefolder:{_shown(root)}: test split")
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if in_channels == 3 else ((0.5,), (0.25,))
    return FolderData(f"imagefolder:{root}", classes, train, test, image_size, in_channels, list(mean), list(std),
                      workers)


# ----------------------------------------------------------------------------------------------------
def dataset_of(meta: dict, default: str) -> str:
    """The dataset a checkpoint's or family's metadata names (`dataset` as a name or a {"name": ...}
    description, or `data`), else `default`."""
    for key in ("dataset", "data"):
        value = meta.get(key)
        if isinstance(value, dict):
            value = value.get("name")
        if isinstance(value, str) and value:
            return value
    return default


def load_dataset(spec: str, image_size: int | None = None, in_channels: int | None = None,
                 workers: int = 2) -> TensorData | FolderData:
    """A dataset by spec: `animals`, `digits` or `imagefolder:PATH`. `image_size`/`in_channels` matter only
    for image folders (the preset's largest resolution and its input channels). An unknown spec is refused
    as `data: ...` (the CLI's --data)."""
    if not isinstance(spec, str):
        raise UserError(f"data: expected a dataset name ({', '.join(DATASETS)}), got {spec!r}")
    if image_size is not None:
        count(image_size, "image_size", low=1, high=8192)
    if in_channels is not None:
        count(in_channels, "in_channels", low=1, high=64)
    count(workers, "workers", low=0, high=64)
    if spec == "animals":
        return load_animals()
    if spec == "digits":
        return load_digits()
    if spec.startswith("imagefolder:"):
        if not spec[len("imagefolder:"):]:
            raise UserError("data: 'imagefolder:' names no folder: expected imagefolder:PATH")
        return load_image_folder(spec[len("imagefolder:"):], image_size or 224, in_channels or 3, workers)
    raise UserError(f"data: unknown dataset '{spec[:80]}': expected one of {', '.join(DATASETS)}")


def resize_batch(x: Tensor, r: int) -> Tensor:
    """A batch at resolution `r` (bilinear, antialiased when shrinking): how training varies the resolution."""
    if x.shape[-1] == r and x.shape[-2] == r:
        return x
    return F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False, antialias=r < x.shape[-1])
