"""A restricted unpickler for diffusion_policy ``.ckpt`` files (no arbitrary code).

diffusion_policy saves ``torch.save(payload, pickle_module=dill)``. Its payload holds
tensors, an OmegaConf cfg, optimizer state and a few dill-pickled values; torch's own
``weights_only`` loader refuses some of these (``dill._dill._load_type``,
``collections.defaultdict``, ``_codecs.encode``). This module lets ``torch.load`` read
them through an allow-list: only the globals below can be created, anything from
``diffusion_policy`` / ``hydra`` becomes an inert :class:`OpaqueObject`, so do OmegaConf's
config classes (read as plain data by ``dp_config``, never constructed), and every
other global (``os.system``, ``builtins.eval``, ...) raises ``UnpicklingError``
before it can run. Nothing from diffusion_policy is imported.
"""

from __future__ import annotations

import builtins
import pickle
import types
from typing import Any

# Modules whose classes we never import: replaced by inert stand-ins.
OPAQUE_MODULE_PREFIXES = ("diffusion_policy", "hydra", "wandb", "robomimic")

_BUILTIN_TYPES = {"dict", "list", "set", "frozenset", "tuple", "int", "float", "bool", "str",
                  "bytes", "bytearray", "complex", "slice", "range", "object", "NoneType"}

_ALLOWED: dict[str, set[str]] = {
    "collections": {"OrderedDict", "defaultdict", "deque"},
    "builtins": _BUILTIN_TYPES,
    "__builtin__": _BUILTIN_TYPES,
    "copyreg": {"_reconstructor"},
    "_codecs": {"encode"},
    "typing": {"Any", "Dict", "List", "Tuple", "Optional", "Union"},
    "torch._utils": {"_rebuild_tensor_v2", "_rebuild_tensor", "_rebuild_parameter",
                     "_rebuild_parameter_with_state"},
    "torch": {"Size", "device", "float32", "float16", "bfloat16", "float64", "int64", "int32",
              "uint8", "bool"},
    "numpy": {"dtype", "ndarray"},
    "numpy.core.multiarray": {"_reconstruct", "scalar"},
    "numpy._core.multiarray": {"_reconstruct", "scalar"},
}
# OmegaConf classes are never built: constructing them evaluates type-annotation strings and
# resolving them runs resolvers. They become inert stand-ins whose pickled state
# ``engine.dp_config.to_plain`` reads as plain data.
OMEGACONF_CLASSES: dict[str, set[str]] = {
    "omegaconf.dictconfig": {"DictConfig"},
    "omegaconf.listconfig": {"ListConfig"},
    "omegaconf.base": {"ContainerMetadata", "Metadata", "Container", "Node"},
    "omegaconf.nodes": {"AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode",
                        "EnumNode", "BytesNode", "PathNode", "ValueNode",
                        "InterpolationResultNode"},
    "omegaconf": {"DictConfig", "ListConfig"},
}


class OpaqueObject:
    """Stand-in for a class we refuse to import; keeps its state for inspection only."""

    _module = "?"
    _qualname = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<opaque {self._module}.{self._qualname}>"


def _opaque_class(module: str, name: str, omegaconf: bool = False) -> type:
    return type(name, (OpaqueObject,), {"_module": module, "_qualname": name,
                                        "_omegaconf_standin": omegaconf})


def _dill_load_type(name: str) -> type:
    # dill pickles builtin types (dict, int, ...) by name; allow only plain data types.
    if name in _BUILTIN_TYPES or name in ("DictType", "ListType", "TupleType", "StringType"):
        t = getattr(builtins, name, None) or {"NoneType": type(None), "DictType": dict,
                                              "ListType": list, "TupleType": tuple,
                                              "StringType": str}.get(name)
        if isinstance(t, type):
            return t
    raise pickle.UnpicklingError(
        f"checkpoint asks dill for type {name!r}, which the restricted loader does not "
        "allow. If you trust the file, load it with allow_pickle=True (`--allow-pickle`)."
    )


# Allow-listed callables that allocate from a small argument: bytes(10**10), bytearray(n) and
# list(range(10**10)) turn a few bytes of pickle into gigabytes. Plain checkpoint data never
# needs sizes like these (tensors come from the archive's records, not from builtins).
MAX_BUILTIN_ALLOC = 1 << 26


class _SizedRange:
    def __new__(cls, *args: Any) -> range:
        r = range(*args)
        if len(r) > MAX_BUILTIN_ALLOC:
            raise pickle.UnpicklingError(f"checkpoint builds a range of {len(r)} items (a "
                                         "memory bomb), which the restricted loader refuses.")
        return r


def _sized(kind: type) -> type:
    class Sized:
        def __new__(cls, *args: Any) -> Any:
            if args and isinstance(args[0], int) and not isinstance(args[0], bool) and \
                    args[0] > MAX_BUILTIN_ALLOC:
                raise pickle.UnpicklingError(f"checkpoint allocates {kind.__name__}({args[0]}) "
                                             "(a memory bomb), which the restricted loader "
                                             "refuses.")
            return kind(*args)
    return Sized


_GUARDED = {"range": _SizedRange, "bytes": _sized(bytes), "bytearray": _sized(bytearray)}


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` only resolves allow-listed globals."""

    def find_class(self, module: str, name: str) -> Any:
        if module in ("builtins", "__builtin__") and name in _GUARDED:
            return _GUARDED[name]
        if module.split(".")[0] in OPAQUE_MODULE_PREFIXES:
            return _opaque_class(module, name)
        if name in OMEGACONF_CLASSES.get(module, ()):
            return _opaque_class(module, name, omegaconf=True)
        if module == "dill._dill" and name == "_load_type":
            return _dill_load_type
        if name in _ALLOWED.get(module, ()):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"checkpoint references {module}.{name}, which the restricted loader does not "
            "allow (it could run code). If you trust the file, load it with "
            "allow_pickle=True (`bac convert --allow-pickle`, ROS parameter "
            "`allow_pickle_checkpoint`)."
        )


def _load(file, **kwargs: Any) -> Any:
    return RestrictedUnpickler(file, **kwargs).load()


# What torch.load(pickle_module=...) needs: Unpickler (zip format) and load (legacy format).
restricted_pickle_module = types.SimpleNamespace(
    __name__="bac_ros_restricted_pickle", Unpickler=RestrictedUnpickler, load=_load,
    UnpicklingError=pickle.UnpicklingError,
)

__all__ = ["OpaqueObject", "RestrictedUnpickler", "restricted_pickle_module"]
