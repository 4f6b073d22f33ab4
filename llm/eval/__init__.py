"""Evaluation: the same tasks and metrics for every checkpoint and Hugging Face model.

    task_files.py  task files (YAML with a JSONL of rows) → `EvalTask`; the shipped tasks
    loglik.py    log-likelihood of (context, continuation) pairs, the context scored once
                 for all of its continuations; rolling windows for perplexity
    stats.py     means with standard errors, the unbiased pass@k, bits per byte
    runner.py    multiple choice, perplexity and generation tasks on a loaded model
    table.py     results → one markdown / CSV table, models by tasks
    lm_eval.py   the lm-evaluation-harness adapter (`python -m llm.eval.lm_eval`)
    during_training.py  `eval.tasks` run by the training loop at each evaluation
    shipped.py   regenerates the shipped arithmetic rows in `tasks/`
"""
