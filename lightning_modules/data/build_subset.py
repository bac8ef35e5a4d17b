"""Build the embedded Fashion-MNIST subset from the official IDX files.

    python -m lightning_modules.data.build_subset --source /usr/share/datasets/fashion-mnist \\
        --out lightning_modules/data/fashion_mnist_subset.npz

The ``.npz`` holds, for ``split`` in ``train``/``test``: ``{split}_images`` ``uint8 (N, 28, 28)``,
``{split}_labels`` ``uint8 (N,)`` and ``{split}_indices`` ``int64 (N,)`` (each image's index in the
official file, ascending), plus ``seed``, ``train_per_class`` and ``test_per_class``. The same
source files, seed and counts always give the same arrays.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .fashion_mnist import EMBEDDED_PATH, load_idx_split, stratified_subset

__all__ = ["build_subset", "main"]


def build_subset(source: str | Path, out: str | Path, train_per_class: int = 600, test_per_class: int = 100,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """Draw ``train_per_class`` / ``test_per_class`` images per class from ``source`` and write ``out``.

    The train subset comes from the official train split and the test subset from the official
    test split, so the test images were never part of any training set. Returns the saved arrays.
    """
    arrays: dict[str, np.ndarray] = {
        "seed": np.int64(seed),
        "train_per_class": np.int64(train_per_class),
        "test_per_class": np.int64(test_per_class),
    }
    for split, per_class, split_seed in (("train", train_per_class, seed), ("test", test_per_class, seed + 1)):
        images, labels = load_idx_split(source, split)
        indices = stratified_subset(labels, per_class, split_seed)
        arrays[f"{split}_images"] = images[indices]
        arrays[f"{split}_labels"] = labels[indices].astype(np.uint8)
        arrays[f"{split}_indices"] = indices
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    return arrays


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True, help="directory with the official IDX files (Debian or torchvision layout)")
    parser.add_argument("--out", default=str(EMBEDDED_PATH), help="the .npz to write (default: %(default)s)")
    parser.add_argument("--train-per-class", type=int, default=600)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    arrays = build_subset(args.source, args.out, args.train_per_class, args.test_per_class, args.seed)
    size = Path(args.out).stat().st_size
    print(f"wrote {args.out} ({size / 1e6:.2f} MB): {len(arrays['train_images'])} train + "
          f"{len(arrays['test_images'])} test images")


if __name__ == "__main__":
    main()
