"""Type aliases shared by the package's modules (defined once, imported everywhere), and the lookup that keeps
names that moved to another module (issue 19) importable from their old one, with a DeprecationWarning."""
from __future__ import annotations

import os
import warnings
from types import ModuleType
from typing import Any, Callable, Dict, Union

PathLike = Union[str, os.PathLike]


def moved_names(old: str, homes: Dict[str, ModuleType]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for names that now live in ``homes[name]``: old imports (pushed Kaggle kernels,
    older notebooks) keep working and are told where the name lives now. The package itself never uses it."""
    def __getattr__(name: str) -> Any:
        if name not in homes:
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        home = homes[name].__name__
        warnings.warn(f"{old}.{name} moved to {home}.{name}; import it from there", DeprecationWarning, stacklevel=2)
        return getattr(homes[name], name)
    return __getattr__
