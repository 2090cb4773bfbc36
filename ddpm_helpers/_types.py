"""Type aliases shared by the package's modules (defined once, imported everywhere)."""
from __future__ import annotations

import os
from typing import Union

PathLike = Union[str, os.PathLike]
