"""Sweeps over config overrides: expand (spec), run (execute), read back (results), plot,
and plan a compute-optimal run from the results (planner, over llm/scaling.py).

`runner.run_sweep` is the whole sweep stage; scripts/sweep.py and scripts/plan.py are the
command lines.
"""
