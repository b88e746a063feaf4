"""Sweep presets shipped with flashbench."""
