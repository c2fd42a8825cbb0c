"""Packaging that pyproject.toml cannot say statically: the repository keeps agent/, modules/,
control/ and schemas/ at its top level, and they are installed as edgeva.agent, edgeva.modules,
edgeva.control and edgeva.schemas (one top-level import package, ``edgeva``; no generic names)."""
from setuptools import find_namespace_packages, setup

PARTS = ("agent", "modules", "control", "schemas", "bench")

setup(
    packages=["edgeva"] + [f"edgeva.{p}" for p in find_namespace_packages(include=[f"{t}{s}" for t in PARTS for s in ("", ".*")])],
    package_dir={"edgeva": "edgeva", **{f"edgeva.{t}": t for t in PARTS}},
)
