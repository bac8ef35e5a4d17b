"""Weights in: the weights table, fetching, the authors' format, models with their weights.

Rooms, lowest first: :mod:`.network` (timeouts, caches, offline mode, the "unreachable" advice),
:mod:`.hub_files` and :mod:`.url_files` (one downloader each), :mod:`.table` (the one file a
maintainer edits to publish weights), :mod:`.official` (the authors' checkpoints),
:mod:`.pretrained` (pretrained tags: which file, fetched how, a model built with it) and
:mod:`.exports` (``local-dir:`` / ``hf-hub:`` exports, verified). The export format itself is
:mod:`dcls_zoo.export_format`; state-dict hygiene (safe loading, cleaning, strict checks, atomic
writes, confinement, checksums) is :mod:`dcls_zoo.state_dicts`; errors are :mod:`dcls_zoo.errors`;
weights out (export, model card, push) is :mod:`dcls_zoo.hub`.
"""
