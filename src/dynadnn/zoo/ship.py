"""Add a trained checkpoint to the zoo: `python -m dynadnn.zoo.ship CKPT NAME "description"`.

Re-evaluates the max and min members (BN-calibrated, test split) so the card's numbers are measured on the very
file that ships, then writes `NAME.safetensors` (weights + metadata) and `NAME.json` (the card) next to this
module, both atomically.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

MAX_BYTES = 10 * 1024 * 1024


def ship(ckpt: str, name: str, description: str, n_random: int = 0) -> dict:
    import torch

    from ..data import load_dataset
    from ..evaluate import evaluate_members, parse_subnets
    from ..supernet import load_checkpoint
    from ..fileio import atomic_write, write_text

    src = Path(ckpt)
    if src.stat().st_size > MAX_BYTES:
        raise SystemExit(f"{src}: {src.stat().st_size} bytes, over the zoo's 10 MB limit")
    net, meta = load_checkpoint(src)
    data = load_dataset(meta["data"])
    rows = evaluate_members(net, data, parse_subnets("max,min" + (f",random:{n_random}" if n_random else ""),
                                                     net.space), with_cost=True)
    metrics = {f"top1_{r['name']}": r["top1"] for r in rows[:2]}
    card = {
        "name": name, "description": description, "preset": meta["preset"], "data": meta["data"],
        "metrics": {**metrics, "split": "test (2000 images, fixed stratified split seed 0)",
                    "bn_calibration": "2000 training images per member (seed 0)",
                    "macs_max": rows[0]["macs"], "macs_min": rows[1]["macs"],
                    "params_max": rows[0]["params"], "params_min": rows[1]["params"]},
        "train": {"command": meta.get("command"), "steps": meta.get("steps"), "seed": meta.get("seed"),
                  "train_seconds": meta.get("train_seconds"), "recipe": meta.get("recipe"),
                  "torch": torch.__version__},
        "evaluate": f"dynadnn eval zoo:{name} --subnets max,min",
    }
    root = Path(__file__).resolve().parent
    atomic_write(root / f"{name}.safetensors", lambda tmp: shutil.copyfile(src, tmp))
    write_text(root / f"{name}.json", json.dumps(card, indent=2) + "\n")
    for f in (root / f"{name}.safetensors", root / f"{name}.json"):
        f.chmod(0o644)
    return card


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    print(json.dumps(ship(sys.argv[1], sys.argv[2], sys.argv[3])["metrics"], indent=2))
