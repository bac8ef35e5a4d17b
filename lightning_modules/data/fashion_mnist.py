"""Fashion-MNIST without downloads: an IDX reader, the official files on disk, and the embedded subset.

Pure numpy functions (no torch, no Lightning):

- :func:`read_idx` reads one IDX file (gzipped or not) into an array, checking its header.
- :func:`load_idx_split` finds and reads the official ``train`` / ``test`` files in a directory,
  either in the Debian layout (``apt-get install dataset-fashion-mnist`` puts them in
  ``/usr/share/datasets/fashion-mnist``) or in torchvision's (``ROOT/FashionMNIST/raw/``).
- :func:`load_embedded` reads the stratified subset committed with the package
  (600 images per class from the official train split, 100 per class from the official test split;
  see ``LICENSE-fashion-mnist.txt`` and :mod:`lightning_modules.data.build_subset`).
- :func:`stratified_subset` / :func:`stratified_split` draw class-balanced index sets.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Literal

import numpy as np

__all__ = [
    "CLASS_NAMES",
    "EMBEDDED_PATH",
    "IMAGE_SHAPE",
    "embedded_source_indices",
    "find_idx_files",
    "load_embedded",
    "load_idx_split",
    "read_idx",
    "read_idx_header",
    "stratified_split",
    "stratified_subset",
]

Split = Literal["train", "test"]

#: The 10 Fashion-MNIST classes, indexed by label.
CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

IMAGE_SHAPE = (28, 28)

#: The committed subset (written by ``python -m lightning_modules.data.build_subset``).
EMBEDDED_PATH = Path(__file__).resolve().parent / "fashion_mnist_subset.npz"

# IDX type codes (third byte of the magic number) -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
_FILE_PREFIX = {"train": "train", "test": "t10k"}


def _open(path: Path):
    """Open ``path`` for reading bytes, decompressing when it starts with the gzip magic bytes."""
    with open(path, "rb") as f:
        gzipped = f.read(2) == _GZIP_MAGIC
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def _parse_header(path: Path, head: bytes) -> tuple[np.dtype, tuple[int, ...], int]:
    """``(dtype, shape, header_size)`` from the first bytes of an IDX file; ``ValueError`` if invalid."""
    if len(head) < 4:
        raise ValueError(f"{path}: not an IDX file: {len(head)} bytes, shorter than the 4-byte magic number")
    if head[0] != 0 or head[1] != 0:
        raise ValueError(
            f"{path}: not an IDX file: magic number {head[:4].hex()} does not start with two zero bytes "
            "(is it compressed with something other than gzip?)"
        )
    code, ndim = head[2], head[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02x}" for c in _IDX_DTYPES)
        raise ValueError(f"{path}: unknown IDX data type 0x{code:02x} in magic number {head[:4].hex()} (known: {known})")
    if ndim == 0:
        raise ValueError(f"{path}: IDX magic number {head[:4].hex()} declares 0 dimensions")
    header_size = 4 + 4 * ndim
    if len(head) < header_size:
        raise ValueError(f"{path}: truncated IDX header: {ndim} dimensions need {header_size} bytes, file has {len(head)}")
    shape = tuple(int(d) for d in np.frombuffer(head, dtype=">u4", count=ndim, offset=4))
    return _IDX_DTYPES[code], shape, header_size


def read_idx_header(path: str | Path) -> tuple[np.dtype, tuple[int, ...]]:
    """The data type and shape an IDX file declares, reading only its header.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the header is not a valid IDX header (the message names the file).
    """
    path = Path(path)
    with _open(path) as f:
        head = f.read(4)
        if len(head) == 4:
            head += f.read(4 * head[3])
    dtype, shape, _ = _parse_header(path, head)
    return dtype.newbyteorder("="), shape


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzipped or not; detected from the content, not the name).

    Returns:
        An array of the declared shape, in native byte order (``uint8`` for Fashion-MNIST images
        ``(N, 28, 28)`` and labels ``(N,)``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: bad magic number, unknown data type, or a data size that does not match the
            declared dimensions (the message names the file and both sizes).
    """
    path = Path(path)
    with _open(path) as f:
        try:
            data = f.read()
        except (OSError, EOFError) as e:  # corrupt or truncated gzip stream
            raise ValueError(f"{path}: cannot decompress: {e}") from e
    dtype, shape, header_size = _parse_header(path, data)
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - header_size
    if actual != expected:
        raise ValueError(
            f"{path}: IDX header declares shape {shape} of {dtype.name} ({expected} bytes of data) "
            f"but the file holds {actual} bytes after the {header_size}-byte header"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def _check_split(split: str) -> None:
    if split not in _FILE_PREFIX:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def _layout_dirs(root: Path) -> list[Path]:
    """Directories searched, in order: Debian's flat layout, then torchvision's."""
    return [root, root / "FashionMNIST" / "raw"]


def _file_names(split: str) -> tuple[str, str]:
    prefix = _FILE_PREFIX[split]
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def find_idx_files(root: str | Path, split: Split) -> tuple[Path, Path]:
    """The ``(images, labels)`` IDX files of ``split`` under ``root``, without reading them.

    Looked for, in order, in ``root`` (Debian layout) and ``root/FashionMNIST/raw`` (torchvision),
    each name uncompressed or with ``.gz``; both files must be in the same directory.

    Raises:
        ValueError: ``split`` is not ``"train"`` or ``"test"``.
        FileNotFoundError: no directory holds both files; the message names ``root``, every
            path looked for, and the files that were found.
    """
    _check_split(split)
    root = Path(root)
    looked, found_any = [], []
    for directory in _layout_dirs(root):
        pair = []
        for name in _file_names(split):
            candidates = [directory / name, directory / f"{name}.gz"]
            looked += candidates
            hit = next((c for c in candidates if c.is_file()), None)
            if hit is not None:
                found_any.append(hit)
                pair.append(hit)
        if len(pair) == 2:
            return pair[0], pair[1]
    if not root.is_dir():
        problem = "the directory does not exist"
    elif found_any:
        problem = "incomplete: found only " + ", ".join(map(str, found_any))
    else:
        problem = "none of the files is there"
    raise FileNotFoundError(
        f"Fashion-MNIST {split} files not found in {root} ({problem}). Looked for the images and "
        f"labels together in one directory, each raw or gzipped: {', '.join(map(str, looked))}. "
        "Get them offline with `apt-get install dataset-fashion-mnist` "
        "(then use /usr/share/datasets/fashion-mnist)."
    )


def load_idx_split(root: str | Path, split: Split) -> tuple[np.ndarray, np.ndarray]:
    """The official Fashion-MNIST ``split`` from IDX files under ``root`` (see :func:`find_idx_files`).

    Returns:
        ``(images, labels)``: ``uint8 (N, 28, 28)`` and ``int64 (N,)`` with values in ``0..9``
        (N = 60,000 for train and 10,000 for test in the official files).

    Raises:
        FileNotFoundError: the files are missing (see :func:`find_idx_files`).
        ValueError: a file is not valid IDX, the shapes are not Fashion-MNIST's, the counts of
            images and labels differ, or a label is out of range.
    """
    images_path, labels_path = find_idx_files(root, split)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"{images_path}: expected uint8 images of shape (N, 28, 28), got {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(f"{labels_path}: expected uint8 labels of shape (N,), got {labels.dtype} {labels.shape}")
    if len(labels) != len(images):
        raise ValueError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    if len(labels) and labels.max() >= len(CLASS_NAMES):
        raise ValueError(f"{labels_path}: label {labels.max()} out of range 0..{len(CLASS_NAMES) - 1}")
    return images, labels.astype(np.int64)


def _load_npz(split: str) -> dict[str, np.ndarray]:
    _check_split(split)
    if not EMBEDDED_PATH.is_file():
        raise FileNotFoundError(
            f"the embedded Fashion-MNIST subset {EMBEDDED_PATH} is missing (a broken install?); "
            "rebuild it with `python -m lightning_modules.data.build_subset --source DIR --out "
            f"{EMBEDDED_PATH}`"
        )
    with np.load(EMBEDDED_PATH) as npz:
        return {key: npz[f"{split}_{key}"] for key in ("images", "labels", "indices")}


def load_embedded(split: Split) -> tuple[np.ndarray, np.ndarray]:
    """The Fashion-MNIST subset shipped with the package.

    Returns:
        ``(images, labels)``: ``uint8 (N, 28, 28)`` and ``int64 (N,)``; N = 6,000 (600 per class)
        for ``"train"`` and 1,000 (100 per class, from the official test split) for ``"test"``,
        ordered by their index in the official files.
    """
    arrays = _load_npz(split)
    return arrays["images"], arrays["labels"].astype(np.int64)


def embedded_source_indices(split: Split) -> np.ndarray:
    """``int64 (N,)``: where each image of :func:`load_embedded` ``(split)`` sits in the official file."""
    return _load_npz(split)["indices"].astype(np.int64)


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} of shape {labels.shape}")
    return labels


def stratified_subset(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """``per_class`` indices drawn at random (without replacement) from every class in ``labels``.

    Returns:
        ``int64 (num_classes_present * per_class,)``, sorted ascending. Deterministic in ``seed``.

    Raises:
        ValueError: ``per_class < 1`` or a class has fewer than ``per_class`` examples.
    """
    labels = _check_labels(labels)
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            raise ValueError(f"per_class={per_class} but class {c} has only {len(members)} examples")
        chosen.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def stratified_split(labels: np.ndarray, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(len(labels))`` into ``(rest, held_out)`` with ``len(held_out) == size``.

    Every class gets a share of ``held_out`` proportional to its frequency (largest remainders
    round), so a balanced ``labels`` with ``size`` divisible by the class count gives exactly
    ``size / num_classes`` per class.

    Returns:
        Two disjoint sorted ``int64`` index arrays covering ``range(len(labels))``.

    Raises:
        ValueError: ``size`` is not in ``1 .. len(labels) - 1``.
    """
    labels = _check_labels(labels)
    n = len(labels)
    if not 1 <= size < n:
        raise ValueError(f"size must be in [1, {n - 1}] for {n} labels, got {size}")
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * size / n
    take = np.floor(quota).astype(np.int64)
    order = np.argsort(-(quota - take), kind="stable")
    take[order[: size - take.sum()]] += 1
    rng = np.random.default_rng(seed)
    held = [rng.choice(np.flatnonzero(labels == c), size=k, replace=False) for c, k in zip(classes, take)]
    held_out = np.sort(np.concatenate(held)).astype(np.int64)
    mask = np.ones(n, dtype=bool)
    mask[held_out] = False
    return np.flatnonzero(mask).astype(np.int64), held_out
