"""Typed schemas of the Hydra configs (lossbench/conf) and the catalogue of what they offer."""
