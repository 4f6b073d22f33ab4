"""Sweeps: one file per sweep, each `get_config(arg)` built with `configs/sweeps/base.py`."""
