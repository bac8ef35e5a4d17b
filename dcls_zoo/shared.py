"""Positions (and widths) shared by several DCLS layers, e.g. every block of a ConvNeXt stage.

A :class:`SharedPositions` module owns ``P`` (and ``SIG``) once; autograd sums the gradients of
every layer that uses it. It is registered in the module tree several times:

- once canonically, in a :class:`SharedPositionsDict` on its owner module under
  :data:`SHARED_ATTRIBUTE` (:func:`register_shared_positions`): ``<stage>.dcls_shared.<role>``;
- once in each layer that uses it, as the submodule ``shared_positions`` (an alias), so that any
  module holding a layer holds its positions too: ``parameters()`` of a block, of a torch.fx
  ``GraphModule`` that copied the layers (timm's FX feature extraction), of a deep copy.

Every traversal names and stores the group once, at its canonical place when the traversal
reaches it, else at the first alias (a ``GraphModule`` holds no owner):

- ``named_modules`` / ``named_parameters`` / ``parameters()`` skip an alias met inside the owner
  before the owner's container (so names and order are the canonical ones, as in a model without
  aliases: optimizer states and timm's layer-wise groups see the same parameters);
- ``state_dict()`` keeps one copy, under the canonical key (``...dcls_shared.<role>.P``) whenever
  the traversal has one, so safetensors exports, the authors' checkpoint converter and strict
  loading see the same keys as before;
- ``load_state_dict`` reports a group missing only when none of its registrations found its keys
  (strict loading of a model still fails on a missing canonical key).

The per-axis footprints are built once per forward of the group: the first layer to ask builds
them and the others reuse them, until a layer asks a second time (the next forward), the
positions change, the grad mode changes or a backward pass has gone through them (and never
inside activation checkpointing, whose recomputation must repeat the forward exactly). No hook
is needed, so scripted, traced and exported models see plain modules.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from .backends import is_compiling
from .construct import (
    Footprints,
    Interpolation,
    axis_footprints,
    clamp_positions_,
    init_positions_,
    resolve_interpolation,
)

__all__ = ["ALIAS_ATTRIBUTE", "SHARED_ATTRIBUTE", "SharedPositions", "SharedPositionsDict", "register_shared_positions"]


def _saving_through_hooks() -> bool:
    """Whether saved-tensor hooks are active (activation checkpointing, CPU offloading).

    A checkpointed block is recomputed during backward and must save the same tensors as in
    its forward, so inside one no footprints are reused: every layer builds its own.
    """
    return torch._C._autograd._top_saved_tensors_default_hooks(False) is not None

# The attribute under which a model keeps its shared position groups: ``<owner>.dcls_shared.<role>``.
SHARED_ATTRIBUTE = "dcls_shared"
# The attribute under which each DCLS layer registers the group it uses (``None``: it owns P/SIG).
ALIAS_ATTRIBUTE = "shared_positions"


def _is_canonical(prefix: str) -> bool:
    """Whether a state-dict ``prefix`` (``"stages.0.dcls_shared.conv_dw."``) is a container's registration."""
    parts = prefix.split(".")  # the prefix ends with "."; its last part is ""
    return len(parts) >= 3 and parts[-3] == SHARED_ATTRIBUTE


class _Home:
    """Where a group is registered canonically: its owner module (weakly) and its role.

    Weak: a layer saved or copied on its own must not carry its whole stage along. A deep copy
    points at the copy of the owner (the owner is an ancestor of every registration of the
    group, so ``copy.deepcopy`` of a model has copied it before it reaches the group); a pickle
    keeps the owner (it is pickled with the model anyway).
    """

    __slots__ = ("_owner", "role")

    def __init__(self, owner: nn.Module | None, role: str) -> None:
        self._owner = None if owner is None else weakref.ref(owner)
        self.role = role

    def owner(self) -> nn.Module | None:
        return None if self._owner is None else self._owner()

    def __deepcopy__(self, memo: dict) -> _Home:
        owner = self.owner()
        copied = None if owner is None else memo.get(id(owner))
        return _Home(copied if isinstance(copied, nn.Module) else None, self.role)

    def __reduce__(self) -> tuple:
        return _Home, (self.owner(), self.role)


# Per group, the traversal in progress (module-level, so copies and pickles of a group carry none):
# state_dict(): (id of the destination, prefix the tensors went under); checked against the
# destination's keys before use, so a reused id is harmless.
_SAVED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# load_state_dict(): [missing-keys list of the load (kept: its identity names the load), whether a
# registration found the keys, keys an alias reported missing before].
_LOADING: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

class _CachedFootprints(NamedTuple):
    footprints: Footprints
    users: set[int]  # id() of the layers that took them
    key: tuple  # what they were built from and under: parameter versions, grad and inference mode


class _FootprintCache:
    """Holds the group's last footprints; copies and pickles start empty (they may hold a graph)."""

    def __init__(self) -> None:
        self.entry: _CachedFootprints | None = None

    def forget(self, built: weakref.ref) -> None:
        if self.entry is not None and self.entry.footprints is built():
            self.entry = None

    def __deepcopy__(self, memo: dict) -> _FootprintCache:
        return _FootprintCache()

    def __getstate__(self) -> dict:
        return {"entry": None}


class _Forget:
    """Backward pre-hook: drops the cached footprints it was made for (weak references only)."""

    def __init__(self, cache: _FootprintCache, footprints: Footprints) -> None:
        self.cache, self.footprints = weakref.ref(cache), weakref.ref(footprints)

    def __call__(self, grad_outputs: tuple) -> None:
        cache = self.cache()
        if cache is not None:
            cache.forget(self.footprints)


class SharedPositions(nn.Module):
    """``P`` (and ``SIG``) of shape ``(d, *element_shape)`` shared by a group of DCLS layers.

    Args:
        element_shape: ``(C_out, C_in / groups, *dense, K)``, the layers' ``weight`` shape; use
            size 1 for dimensions the positions do not vary along (ConvNeXt-dcls: ``(C, 1, K)``).
        learned_kernel_size: window sizes along the learned axes (``d`` of them).
        version: the interpolation (see :func:`dcls_zoo.construct.resolve_interpolation`).
    """

    def __init__(
        self,
        element_shape: Sequence[int],
        learned_kernel_size: Sequence[int],
        version: str | Interpolation = "gauss",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.learned_kernel_size = tuple(learned_kernel_size)
        self.interpolation = resolve_interpolation(version)
        shape = (len(self.learned_kernel_size), *element_shape)
        self.P = nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
        if self.interpolation.has_sigma:
            self.SIG = nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
        else:
            self.register_parameter("SIG", None)
        self._footprint_cache = _FootprintCache()
        self.reset_parameters()

    # --- one group, several registrations -------------------------------------------------------

    def _canonical_owner(self) -> nn.Module | None:
        """The module whose :data:`SHARED_ATTRIBUTE` container registers this group now, or ``None``."""
        home = self.__dict__.get("_home")
        owner = None if home is None else home.owner()
        container = None if owner is None else owner._modules.get(SHARED_ATTRIBUTE)
        if container is None or container._modules.get(home.role) is not self:
            return None
        return owner

    def named_modules(self, memo: set | None = None, prefix: str = "", remove_duplicate: bool = True):
        # An alias met inside the owner before the owner's container yields nothing: the container
        # comes later in the same traversal (the owner is in ``memo``, its children still to come),
        # and the group is named there. Anywhere else the first registration met names it.
        if memo is not None and remove_duplicate and self not in memo:
            owner = self._canonical_owner()
            if owner is not None and owner in memo and owner._modules[SHARED_ATTRIBUTE] not in memo:
                return
        yield from super().named_modules(memo, prefix, remove_duplicate)

    def _state_names(self) -> list[str]:
        return [name for name, tensor in self._parameters.items() if tensor is not None] + [
            name for name, tensor in self._buffers.items()
            if tensor is not None and name not in self._non_persistent_buffers_set
        ]

    def _save_to_state_dict(self, destination, prefix: str, keep_vars: bool) -> None:
        # Aliases come before the canonical registration in a traversal (blocks before their
        # stage's container): the first registration saves, the canonical one takes the tensors
        # over from an alias, and later aliases add nothing.
        canonical = _is_canonical(prefix)
        record = _SAVED.get(self)
        earlier = None
        if record is not None and record[0] == id(destination) and record[1] + "P" in destination:
            earlier = record[1]
        if earlier is not None and earlier != prefix:
            if not canonical or _is_canonical(earlier):
                _forget_metadata(destination, prefix)
                return
            for name in self._state_names():
                destination.pop(earlier + name, None)
            _forget_metadata(destination, earlier)
        super()._save_to_state_dict(destination, prefix, keep_vars)
        _SAVED[self] = (id(destination), prefix)

    def _load_from_state_dict(self, state_dict, prefix: str, local_metadata, strict: bool, missing_keys: list,
                              unexpected_keys: list, error_msgs: list) -> None:
        # A state dict holds the group once (canonical key, or a GraphModule's first alias), so an
        # alias without its keys is missing only if no other registration settles the group: one
        # that finds the keys, or the canonical one (whose own keys then decide). The
        # missing-keys list is shared by the whole load, so it tells one load from the next.
        record = _LOADING.get(self)
        if record is None or record[0] is not missing_keys:
            record = _LOADING[self] = [missing_keys, False, []]
        found = all(prefix + name in state_dict for name in self._state_names())
        reported = len(missing_keys)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if found or _is_canonical(prefix):
            for key in record[2]:  # the earlier aliases' provisional reports
                if key in missing_keys:
                    missing_keys.remove(key)
            record[1:] = [True, []]
        elif record[1]:  # settled already
            del missing_keys[reported:]
        else:  # provisional: a later registration may settle it
            record[2] += missing_keys[reported:]

    def reset_parameters(self) -> None:
        """``P ~ N(0, 0.5)`` clamped into the window; ``SIG`` at the interpolation's initial value."""
        init_positions_(self.P, self.SIG, self.learned_kernel_size, self.interpolation)

    @torch.no_grad()
    def clamp_positions_(self) -> None:
        """Clamp ``P`` in place so every element's centre lies inside the window."""
        clamp_positions_(self.P, self.learned_kernel_size)

    def footprints(self, user: nn.Module | None = None) -> Footprints:
        """The footprints of ``P`` (and ``SIG``), built once per forward of the group.

        Args:
            user: the layer asking (``None``: build afresh). A layer that asks again marks a
                new forward, so the footprints are rebuilt.
        """
        if user is None or is_compiling() or (torch.is_grad_enabled() and _saving_through_hooks()):
            return self._build()
        key = (
            self.P._version, self.P.data_ptr(), None if self.SIG is None else (self.SIG._version, self.SIG.data_ptr()),
            torch.is_grad_enabled(), torch.is_inference_mode_enabled(),
        )
        # setdefault: SharedPositions pickled by versions without this cache load too
        cache = self.__dict__.setdefault("_footprint_cache", _FootprintCache())
        entry = cache.entry
        if entry is not None and entry.key == key and id(user) not in entry.users:
            entry.users.add(id(user))
            return entry.footprints
        footprints = self._build()
        cache.entry = _CachedFootprints(footprints, {id(user)}, key)
        graph = footprints.graph_node()
        if graph is not None:
            # Once a backward pass has run through them their graph is freed: never hand them
            # out again. Weak references only: the node must not keep its own footprints alive.
            graph.register_prehook(_Forget(cache, footprints))
        return footprints

    def _build(self) -> Footprints:
        return axis_footprints(self.P, self.SIG, self.learned_kernel_size, self.interpolation)

    def extra_repr(self) -> str:
        return (
            f"positions={tuple(self.P.shape)}, dilated_kernel_size={self.learned_kernel_size}, "
            f"version={self.interpolation.name!r}"
        )


def _forget_metadata(destination, prefix: str) -> None:
    """Drop the ``_metadata`` entry ``state_dict()`` wrote for a registration that stored nothing."""
    metadata = getattr(destination, "_metadata", None)
    if metadata is not None:
        metadata.pop(prefix[:-1], None)


class SharedPositionsDict(nn.ModuleDict):
    """The container registered on an owner module as :data:`SHARED_ATTRIBUTE`: role -> :class:`SharedPositions`.

    Its forward is the identity because an owner is often an ``nn.Sequential`` (timm's ResNet
    ``layer1``...), whose forward calls every child in order, this container included; a plain
    ``nn.ModuleDict`` there raises ``NotImplementedError``. As the last child it passes the last
    block's output through unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def fuse(self) -> nn.Module:
        """After the layers are fused the positions are no longer used (``timm.utils.reparameterize_model``)."""
        return nn.Identity()


def register_shared_positions(owner: nn.Module, role: str, shared: SharedPositions) -> None:
    """Register ``shared`` canonically as ``owner.dcls_shared[role]`` (keys ``<owner>.dcls_shared.<role>.P``).

    The layers that use the group register it themselves (``shared_positions=`` of the DCLS
    layers); this registration is the one that names it in ``named_parameters`` and
    ``state_dict`` whenever a traversal reaches it.

    Raises:
        TypeError: ``owner`` has an attribute :data:`SHARED_ATTRIBUTE` that is not a
            :class:`SharedPositionsDict`.
    """
    container = owner._modules.get(SHARED_ATTRIBUTE)
    if container is None:
        container = SharedPositionsDict()
        owner.add_module(SHARED_ATTRIBUTE, container)
    elif not isinstance(container, SharedPositionsDict):
        raise TypeError(f"{type(owner).__name__}.{SHARED_ATTRIBUTE} is a {type(container).__name__}, "
                        "not a SharedPositionsDict")
    container[role] = shared
    shared._home = _Home(owner, role)
