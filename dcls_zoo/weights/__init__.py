"""Weights in: the weights table, fetching, the authors' format, building a model with weights.

Rooms, lowest first: :mod:`.fetch` (one downloader for Hub and URL files: confinement, timeouts,
errors), :mod:`.table` (the one file a maintainer edits to publish weights), :mod:`.official`
(the authors' checkpoints), :mod:`.build` (a model with its weights; exports verified). State-dict
hygiene (safe loading, cleaning, strict checks, atomic writes) is :mod:`dcls_zoo.state_dicts`;
weights out (export, model card, push) is :mod:`dcls_zoo.hub`.
"""
