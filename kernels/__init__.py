"""Attention implementations that flashbench measures, one module each."""
