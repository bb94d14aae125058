"""Packaging: pyproject.toml says everything but the package list.

manifests/ stays at the repository root, the single source of truth for `kubectl apply -k`;
the build ships the same files inside the package as `cinder_csi.manifests` (pyproject maps
that package to manifests/; no copy in the tree), so `cinder-csi sandbox` applies the
CSIDriver and StorageClasses wherever the package is installed. pyproject.toml can either
find packages or list them, not both: this lists every package found, plus that one.
"""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["cinder_csi", "cinder_csi.*"]), "cinder_csi.manifests"])
