"""Preference labelling: candidates from the project's model, ranked by people, an AI judge,
a verifier or a reward model, written as preference JSONL the reward and DPO tasks read.

    candidates.py   prompts file → K sampled answers per prompt (`candidates.jsonl`, resumable)
    store.py        the append-only judgement log → `preferences.jsonl` and `report.json`
    judge.py        the AI judge: principles, the A/B template, order-averaged scores
    scorers.py      verifier / reward-model ranking behind one scorer interface
    server.py       the ranking page's HTTP server (static/ holds the page)
    agreement.py    agreement rate and Cohen's kappa between judges, per principle
    modes.py        scripts/label.py's modes over a configs/label.py config
"""
