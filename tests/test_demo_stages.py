"""The demo's stage registry: every stage module has the interface `scripts/demo.py` uses."""

from llm.demo import STAGES, report


def test_stages_run_in_order_and_have_the_interface():
    assert list(STAGES)[:4] == ["data", "pretrain", "sample", "sft"]
    for name, stage in STAGES.items():
        assert stage.NAME == name
        assert isinstance(stage.DESCRIPTION, str) and "\n" not in stage.DESCRIPTION
        assert callable(stage.run) and callable(stage.headline)


def test_headlines_and_table(capsys):
    rows = [("pretrain", 12.4, STAGES["pretrain"].headline(
                {"loss": 2.5, "eval_perplexity": 9.87, "step": 20})),
            ("sft", 3.0, STAGES["sft"].headline({"accuracy_before": 0.1,
                                                 "accuracy_after": 0.525}))]
    report.print_table(rows)
    assert capsys.readouterr().out == (
        "\n| stage | seconds | result |\n|---|---|---|\n"
        "| pretrain | 12 | train loss 2.500, validation perplexity 9.9 after 20 steps |\n"
        "| sft | 3 | answer accuracy on 40 held-out arithmetic questions: 10.0% before, "
        "52.5% after SFT |\n")
