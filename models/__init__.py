"""Trained checkpoints with their recipes, and a small sample of photos, bundled with cim-runtime.

Installed as the package ``cim_runtime_models`` so that the files travel with the distribution.
"""
