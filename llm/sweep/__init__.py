"""Sweeps over config overrides: expand (spec), run (execute), read back (results), plot.

`runner.run_sweep` is the whole stage; scripts/sweep.py is its command line.
"""
