"""Accuracy predictor: an MLP (or, for small noisy training sets, a ridge model) on OFA's one-hot
architecture encoding.

Measuring a sub-network's accuracy needs BN calibration and a pass over a validation set (seconds to
minutes); the search needs tens of thousands of them, so it asks this predictor instead. The network is
OFA's (encoding -> 400 -> ReLU -> 400 -> ReLU -> 400 -> ReLU -> 1, outputting top-1 as a fraction), the
encoding is `SearchSpace.encode_many` (OFA's 128-d layout for the OFA presets), so OFA's published
checkpoint loads as is; for our own super-networks it is trained on (architecture, BN-calibrated
accuracy) pairs. Predictions are returned in percent. Stored as `predictor.safetensors` (weights) +
`predictor.json` (preset and `space`, the search space's full description, so a predictor of a custom space
reloads without the space's JSON file; `checkpoint_sha256`, the super-network it was trained on, when known;
layout, training metrics).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from ..fileio import read_json_object, read_safetensors
from ..provenance import check_checkpoint, resolve_space
from ..space import Arch, SearchSpace
from .genes import GeneCoding

PREDICTOR_FORMAT = "dynadnn.accuracy_predictor/1"
OFA_HIDDEN = (400, 400, 400)
RIDGE_ALPHAS = (1.0, 3.0, 10.0, 30.0)
MIN_PAIRS = 10  # (arch, top-1) pairs below which a cross-validated fit means nothing


def build_mlp(n_in: int, hidden: Sequence[int]) -> nn.Sequential:
    """OFA's layout: Linear/ReLU pairs then Linear(., 1); state-dict keys 0.weight, 2.weight, ..."""
    layers: list[nn.Module] = []
    prev = n_in
    for h in hidden:
        layers += [nn.Linear(prev, h), nn.ReLU()]
        prev = h
    layers.append(nn.Linear(prev, 1))
    return nn.Sequential(*layers)


@dataclass
class FitReport:
    """How well a trained predictor ranks and fits held-out architectures (top-1 in percent): `n_test`
    pairs, each predicted by a model trained on `n_train` others (k-fold cross-validation)."""

    n_train: int
    n_test: int
    rmse: float
    kendall_tau: float
    epochs: int
    model: str = "mlp"
    candidates: dict[str, float] | None = None  # model -> cross-validated Kendall tau, when several were tried

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    from scipy.stats import kendalltau

    tau = kendalltau(np.asarray(a), np.asarray(b)).statistic
    return float(tau) if tau == tau else 0.0


class AccuracyPredictor:
    """Predicted top-1 (percent) for architectures of one search space. `checkpoint_sha256`: the sha256 of
    the super-network checkpoint whose sub-networks it was trained on ("" when unknown, e.g. OFA's); the
    caller that trains it sets it, and `check_checkpoint` refuses another checkpoint."""

    def __init__(self, space: SearchSpace, hidden: Sequence[int] = OFA_HIDDEN, model: nn.Sequential | None = None,
                 meta: dict[str, Any] | None = None, checkpoint_sha256: str = ""):
        self.space = space
        self.hidden = tuple(int(h) for h in hidden)
        self.model = (model or build_mlp(space.encoding_size, self.hidden)).eval()
        self.meta = dict(meta or {})
        self.checkpoint_sha256 = checkpoint_sha256

    # --- prediction -----------------------------------------------------------------------------
    @torch.no_grad()
    def predict_encoded(self, features: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        return np.clip(self.model(x)[:, 0].double().numpy() * 100.0, 0.0, 100.0)  # (a ridge model can overshoot)

    def predict_genes(self, genes: np.ndarray, coding: GeneCoding) -> np.ndarray:
        return self.predict_encoded(coding.onehot(genes))

    def predict(self, archs: Sequence[Arch] | Arch) -> np.ndarray:
        archs = [archs] if isinstance(archs, Arch) else list(archs)
        for a in archs:
            self.space.validate(a)
        return self.predict_encoded(self.space.encode_many(archs))

    # --- OFA's checkpoint -----------------------------------------------------------------------
    @classmethod
    def from_ofa_checkpoint(cls, path: str | Path, space: SearchSpace) -> "AccuracyPredictor":
        """OFA's `acc_predictor.pth` (a state dict 0.weight ... 6.bias), read with weights_only=True."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"accuracy predictor checkpoint '{path}' does not exist")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
            raise UserError(f"{path}: not a readable torch state dict ({exc.__class__.__name__})") from None
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        return cls._from_state(state, space, str(path), {"source": str(path), "origin": "ofa"})

    @classmethod
    def _from_state(cls, state: Any, space: SearchSpace, source: str, meta: dict[str, Any]) -> "AccuracyPredictor":
        if not isinstance(state, dict) or "0.weight" not in state:
            raise UserError(f"{source}: expected an MLP state dict with keys 0.weight, 0.bias, 2.weight, ...")
        for key, value in state.items():
            if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                raise UserError(f"{source}: tensor '{key}': expected floating-point weights")
            if not bool(torch.isfinite(value).all()):
                raise UserError(f"{source}: tensor '{key}' holds NaN or infinite values")
        n_linear = len([k for k in state if k.endswith(".weight")])
        hidden = [int(state[f"{2 * i}.weight"].shape[0]) for i in range(n_linear - 1) if f"{2 * i}.weight" in state]
        model = build_mlp(space.encoding_size, hidden)
        expected = model.state_dict()
        for key, value in expected.items():
            got = state.get(key)
            if got is None:
                raise UserError(f"{source}: missing tensor '{key}' (expected an MLP with {len(hidden)} hidden layers)")
            if tuple(got.shape) != tuple(value.shape):
                raise UserError(f"{source}: tensor '{key}' has shape {tuple(got.shape)}, expected {tuple(value.shape)} "
                                f"for preset '{space.name}' (encoding size {space.encoding_size})")
        extra = sorted(set(state) - set(expected))
        if extra:
            raise UserError(f"{source}: unexpected tensor '{extra[0]}' (expected an MLP with {len(hidden)} hidden layers)")
        model.load_state_dict({k: v.float() for k, v in state.items()})
        return cls(space, hidden, model, meta)

    # --- our own files --------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        from safetensors.torch import save_file

        from ..fileio import atomic_write, make_dir, write_json

        directory = make_dir(directory, "predictor directory")
        tensors = {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}
        atomic_write(directory / "predictor.safetensors", lambda p: save_file(tensors, str(p)))
        info = {**self.meta, "format": PREDICTOR_FORMAT, "preset": self.space.name, "space": self.space.to_dict(),
                "checkpoint_sha256": self.checkpoint_sha256 or None, "encoding_size": self.space.encoding_size,
                "hidden": list(self.hidden), "output": "top-1 fraction (x100 = percent)"}
        write_json(directory / "predictor.json", info, indent=1)
        return directory

    @classmethod
    def load(cls, directory: str | Path, space: SearchSpace | None = None,
             checkpoint: str | Path | None = None) -> "AccuracyPredictor":
        """Read a saved predictor. Its search space is the one its `predictor.json` describes; `space`, when
        given, must be that space (files of older versions, which record only the preset's name, then use it).
        `checkpoint`: see `check_checkpoint`."""
        directory = Path(directory)
        meta_path, weights = directory / "predictor.json", directory / "predictor.safetensors"
        if not meta_path.is_file() or not weights.is_file():
            raise UserError(f"'{directory}' is not an accuracy predictor (expected predictor.json and predictor.safetensors)")
        meta = read_json_object(meta_path, PREDICTOR_FORMAT)
        _check_meta(meta, str(meta_path))
        space = resolve_space(meta, str(meta_path), space, "predictor")
        if meta.get("encoding_size") is not None and meta["encoding_size"] != space.encoding_size:
            raise UserError(f"{meta_path}: field 'encoding_size' is {meta['encoding_size']}, but its space encodes "
                            f"architectures in {space.encoding_size} features")
        sha = meta.get("checkpoint_sha256") or ""
        state = read_safetensors(weights)[0]
        keep = {k: v for k, v in meta.items() if k not in ("format", "preset", "space", "checkpoint_sha256",
                                                           "encoding_size", "hidden", "output")}
        pred = cls._from_state(state, space, str(weights), keep)
        pred.checkpoint_sha256 = sha
        if checkpoint is not None:
            pred.check_checkpoint(checkpoint, f"{meta_path}: predictor")
        return pred

    def check_checkpoint(self, checkpoint: str | Path, where: str = "accuracy predictor") -> None:
        """Refuse a super-network checkpoint this predictor does not describe: one of another search space
        (naming the first differing field) or, when the predictor records the checkpoint it was trained on, a
        file with another sha256 (its sub-networks' accuracies are not the ones it learned)."""
        check_checkpoint(self.space, self.checkpoint_sha256, checkpoint, where, UserError, sha="error",
                         hint="; train a predictor on this checkpoint's sub-networks")

    # --- training -------------------------------------------------------------------------------
    @classmethod
    def fit(cls, space: SearchSpace, archs: Sequence[Arch], top1: Sequence[float], *, hidden: Sequence[int] = OFA_HIDDEN,
            folds: int = 5, epochs: int = 200, lr: float = 1e-3, weight_decay: float = 1e-4,
            seed: int = 0, kind: str = "auto", ridge_alphas: Sequence[float] = RIDGE_ALPHAS
            ) -> tuple["AccuracyPredictor", FitReport]:
        """Train on (architecture, measured top-1 in percent) pairs. The report is k-fold cross-validated:
        every pair is predicted by a model that never saw it (RMSE and Kendall tau over all pairs, steadier
        than one small held-out split); the returned predictor is then fitted on all pairs.

        `kind`: "mlp" (OFA's layout with `hidden` layers), "ridge" (a linear model on the same encoding:
        one additive cost per choice, fitted in closed form with an L2 penalty; stored as an MLP with no
        hidden layer, so files and the search treat it alike) or "auto": whichever ranks held-out pairs
        best. With a few hundred noisy measurements the ridge model usually wins (measured on the shipped
        model, 160 members: cross-validated tau 0.57 against the MLP's 0.43)."""
        if len(archs) != len(top1) or len(archs) < MIN_PAIRS:
            raise UserError(f"accuracy predictor: need at least {MIN_PAIRS} (arch, top-1) pairs, got {len(archs)} archs "
                            f"and {len(top1)} values")
        if kind not in ("auto", "mlp", "ridge"):
            raise UserError(f"accuracy predictor kind '{kind}': expected auto, mlp or ridge")
        x = space.encode_many(list(archs))
        y = np.asarray(top1, dtype=np.float64) / 100.0
        order = np.random.default_rng(seed).permutation(len(x))
        trainers: dict[str, Any] = {}
        if kind in ("auto", "ridge"):
            for a in ridge_alphas:
                trainers[f"ridge(alpha={a:g})"] = (lambda xs, ys, k, a=a: _fit_ridge(xs, ys, a), (), 0)
        if kind in ("auto", "mlp"):
            trainers["mlp(" + ",".join(str(int(h)) for h in hidden) + ")"] = (
                lambda xs, ys, k: _train_mlp(xs, ys, hidden, epochs, lr, weight_decay, seed + k), tuple(hidden), epochs)
        results = {}
        for name, (fit_fn, hid, _) in trainers.items():
            held = np.empty(len(x))
            for k in range(folds):
                test = order[k::folds]
                train = np.setdiff1d(order, test)
                held[test] = cls(space, hid, fit_fn(x[train], y[train], k)).predict_encoded(x[test])
            results[name] = (kendall_tau(held, y), float(math.sqrt(np.mean((held - y * 100.0) ** 2))))
        best = max(results, key=lambda n: (results[n][0], -results[n][1]))
        fit_fn, hid, ep = trainers[best]
        tau, rmse = results[best]
        report = FitReport(len(x) - len(x) // folds, len(x), rmse, tau, ep, best,
                           {n: round(t, 4) for n, (t, _) in results.items()} if len(results) > 1 else None)
        final = fit_fn(x, y, 0)
        return cls(space, hid, final, {"origin": "dynadnn", "fit": report.to_dict()}), report


def _check_meta(meta: dict[str, Any], source: str) -> None:
    """Types of predictor.json's fields (each optional): what `load` and the search read from it."""
    from ..validate import count, field as check_field

    for key, kind in (("checkpoint_sha256", str), ("encoding_size", int), ("hidden", list), ("fit", dict),
                      ("samples", list), ("origin", str)):
        if meta.get(key) is not None:
            check_field(meta, key, kind, source)
    if meta.get("encoding_size") is not None:
        count(meta["encoding_size"], f"{source}: field 'encoding_size'", low=1)
    for i, h in enumerate(meta.get("hidden") or []):
        count(h, f"{source}: field 'hidden[{i}]'", low=1)
    for key, value in (meta.get("fit") or {}).items():
        if key in ("n_train", "n_test", "epochs"):
            count(value, f"{source}: field 'fit.{key}'", low=0)
        elif key in ("rmse", "kendall_tau"):
            check_field(meta["fit"], key, float, f"{source}: field 'fit'")


def _fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> nn.Sequential:
    """Closed-form ridge regression (features centred, intercept unpenalised) as a one-layer model."""
    x = np.asarray(x, dtype=np.float64)
    mu, ym = x.mean(0), float(y.mean())
    a = x - mu
    w = np.linalg.solve(a.T @ a + alpha * np.eye(a.shape[1]), a.T @ (y - ym))
    model = build_mlp(x.shape[1], ())
    with torch.no_grad():
        model[0].weight.copy_(torch.from_numpy(w[None, :].astype(np.float32)))
        model[0].bias.fill_(ym - float(mu @ w))
    return model.eval()


def _train_mlp(x: np.ndarray, y: np.ndarray, hidden: Sequence[int], epochs: int, lr: float, weight_decay: float,
               seed: int) -> nn.Sequential:
    """Adam on MSE of standardised targets (top-1 differences between sub-networks are a few tenths of a
    point; unscaled, their gradients vanish), with the scaling folded back into the last layer so the
    model outputs a top-1 fraction as OFA's does."""
    torch.manual_seed(seed)
    model = build_mlp(x.shape[1], hidden)
    mu, sd = float(y.mean()), float(y.std()) or 1.0
    xt = torch.from_numpy(x.astype(np.float32))
    yt = torch.from_numpy(((y - mu) / sd).astype(np.float32))
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    batch = min(64, len(x))
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), batch):
            idx = perm[i:i + batch]
            loss = nn.functional.mse_loss(model(xt[idx])[:, 0], yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    with torch.no_grad():
        last = model[-1]
        last.weight.mul_(sd)
        last.bias.mul_(sd).add_(mu)
    return model.eval()


def reference_predictor(reference: str | Path, space: SearchSpace) -> AccuracyPredictor:
    """OFA's published predictor from the shared reference directory (or `dynamic-ofa/` itself)."""
    root = Path(reference)
    for cand in (root / "dynamic-ofa" / "ofa_mbv3_acc_predictor.pth", root / "ofa_mbv3_acc_predictor.pth"):
        if cand.is_file():
            return AccuracyPredictor.from_ofa_checkpoint(cand, space)
    raise UserError(f"OFA accuracy predictor not found under '{reference}' "
                    f"(expected dynamic-ofa/ofa_mbv3_acc_predictor.pth; set DYNADNN_REFERENCE)")
