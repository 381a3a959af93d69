"""On PYTHONPATH for the Python processes of `audit build` (never in the executable); acts in Nuitka's data composer.

Nuitka carries a few built-in values (NoneType, Ellipsis, NotImplemented, generic aliases) through its
constant pickles as small wrapper objects, and those hash by address. The data composer rebuilds each
frozenset constant from the pickle and writes it in iteration order, so a frozenset holding a wrapper
(`attr._funcs._ATOMIC_TYPES` holds two) came out in a different order whenever the heap did: one of the
last differences between two builds of the same source. Hashing each wrapper by what it stands for makes
that order a function of the values alone; built-in types themselves hash by their static address, which
`audit build` pins by building with address-space randomisation off.

If a Nuitka release renames these classes this does nothing, and `reproducible check` shows the cost.
"""

from __future__ import annotations

import sys

_WRAPPERS = {
    "BuiltinAnonValue": ("anon_name",),
    "BuiltinSpecialValue": ("value",),
    "BuiltinGenericAliasValue": ("origin", "args"),
    "BuiltinUnionTypeValue": ("args",),
}


def _canonical_hashes() -> None:
    try:
        from nuitka import Serialization
    except ImportError:
        return
    for name, fields in _WRAPPERS.items():
        cls = getattr(Serialization, name, None)
        if cls is None or "__hash__" in vars(cls):
            continue

        def by_value(self: object, _name: str = name, _fields: tuple[str, ...] = fields) -> int:
            return hash((_name, *(getattr(self, f) for f in _fields)))

        cls.__hash__ = by_value


if sys.argv and sys.argv[0].replace("\\", "/").rstrip("/").endswith("nuitka/tools/data_composer"):
    _canonical_hashes()
