"""Image data without downloads: Fashion-MNIST IDX files and the subset embedded in the package.

See :mod:`dcls_zoo.data.fashion_mnist`; the Lightning DataModules built on it live in
``lightning_modules.data``.
"""

from .fashion_mnist import (
    CLASS_NAMES,
    EMBEDDED_PATH,
    embedded_source_indices,
    find_idx_files,
    load_embedded,
    load_idx_split,
    read_idx,
    read_idx_header,
    stratified_split,
    stratified_subset,
)

__all__ = [
    "CLASS_NAMES",
    "EMBEDDED_PATH",
    "embedded_source_indices",
    "find_idx_files",
    "load_embedded",
    "load_idx_split",
    "read_idx",
    "read_idx_header",
    "stratified_split",
    "stratified_subset",
]
