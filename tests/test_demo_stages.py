"""The demo's stage registry: every stage module has the interface `scripts/demo.py` uses."""

from llm.demo import STAGES, report


def test_stages_run_in_order_and_have_the_interface():
    assert list(STAGES)[:4] == ["data", "pretrain", "sample", "sft"]
    for name, stage in STAGES.items():
        assert stage.NAME == name
        assert isinstance(stage.DESCRIPTION, str) and "\n" not in stage.DESCRIPTION
        assert callable(stage.run) and callable(stage.headline)


def test_headlines_and_table(capsys):
    models = {"base": {"heldout_accuracy": 0.0, "heldout_accuracy_per_seed": [0.0] * 3,
                       "bits_per_byte": 3.5},
              "SFT": {"heldout_accuracy": 0.5, "heldout_accuracy_per_seed": [0.5, 0.49, 0.51],
                      "bits_per_byte": 3.4},
              "DPO": {"heldout_accuracy": 0.6, "heldout_accuracy_per_seed": [0.6, 0.6, 0.6],
                      "bits_per_byte": 3.45, "gain_over_sft": 0.1, "margin": 0.04,
                      "clears": True}}
    evaluated = {"models": models, "questions": 200, "file": "eval/results.json"}
    rows = [report.StageReport("pretrain", 12.4, STAGES["pretrain"].headline(
                {"loss": 2.5, "eval_perplexity": 9.87, "step": 20}), None),
            report.StageReport("sft", 3.0, STAGES["sft"].headline(
                {"accuracy_before": 0.1, "accuracy_after": 0.525}), None),
            report.StageReport("eval", 5.0, STAGES["eval"].headline(evaluated),
                               STAGES["eval"].details(evaluated))]
    report.print_table(rows)
    assert capsys.readouterr().out == (
        "\n| stage | seconds | result |\n|---|---|---|\n"
        "| pretrain | 12 | train loss 2.500, validation perplexity 9.9 after 20 steps |\n"
        "| sft | 3 | answer accuracy on 200 held-out arithmetic questions: 10.0% before, "
        "52.5% after SFT |\n"
        "| eval | 5 | held-out accuracy (200 questions × 8, mean of 3 seeds): base 0.0%, "
        "SFT 50.0%, DPO 60.0% (+10.0%); a gain over SFT counts above 4.0% (twice SFT's seed "
        "spread) |\n"
        "\neval:\n| model | held-out accuracy | seeds 0/1/2 | over SFT | bits per byte "
        "(stdlib, unseen) |\n|---|---|---|---|---|\n"
        "| base | 0.0% | 0.0% / 0.0% / 0.0% |  | 3.500 |\n"
        "| SFT | 50.0% | 50.0% / 49.0% / 51.0% |  | 3.400 |\n"
        "| DPO | 60.0% | 60.0% / 60.0% / 60.0% | +10.0% (above 4.0%) | 3.450 |\n\n"
        "(written to eval/results.json)\n")
