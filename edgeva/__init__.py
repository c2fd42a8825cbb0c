"""edgeva: a real-time video analytics runtime for fleets of smart cameras and edge devices.

The one import package edgeva installs. Its parts live at the top of the repository and are
mapped onto this namespace by packaging (``setup.py``): ``edgeva.agent`` (what runs on a device),
``edgeva.modules`` (the module types and their contract), ``edgeva.control`` (the operator's CLI,
client, benchmarks and test kit) and ``edgeva.schemas`` (every message that crosses a process or
device boundary).
"""
from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

# In a source checkout (run from the repository, or a private copy of it such as a mutation
# run's) the parts are this folder's siblings: look for them there. An installed wheel has them
# inside this folder, and the path is left alone.
_here = Path(__file__).resolve().parent
if not (_here / "agent").is_dir() and (_here.parent / "agent" / "__init__.py").is_file():
    __path__.append(str(_here.parent))  # noqa: F821 - a package's __path__
