"""The whole pipeline, as far as it is built, on embedded default data, in a few minutes.

    python scripts/demo.py [--workdir=runs/demo] [--stages=data,pretrain,sample] [--steps=N]

Stages (`llm/demo/`, one module each, run in this order): `data` (the Python standard
library's own sources → cleaned, deduplicated, tokenised corpus), `pretrain` (a tiny
LLaMA-style model), `sample` (text from it), `sft` (fine-tuning on generated arithmetic),
`label` (the SFT model's own answers, verified into preference pairs), `reward` (a reward
model on those pairs), `dpo` (ORPO on them), `grpo` (the verifier as reward), `ppo` (a short
run against the reward model) and `eval` (every checkpoint on held-out questions and unseen
text). Each stage writes under the workdir and can be rerun alone (`--stages=eval`); a table
of what each achieved, the samples and per-model figures below it, and one PNG with a panel
per training stage close the run.
"""

from __future__ import annotations

import pathlib
import sys

from absl import app, flags, logging

# This checkout's `llm` and `configs`, whatever is installed (the stages read configs/*.py).
ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llm import host_memory  # noqa: E402
from llm.demo import STAGES, report  # noqa: E402
from llm.demo.context import Context  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "where every stage writes")
_STAGES = flags.DEFINE_list("stages", list(STAGES), "stages to run, of: " + "; ".join(
    f"{name} ({stage.DESCRIPTION})" for name, stage in STAGES.items()))
_DEFAULT = Context(workdir=pathlib.Path(), root=ROOT)
_STEPS = flags.DEFINE_integer("steps", _DEFAULT.steps, "pretraining steps")
_SFT_STEPS = flags.DEFINE_integer("sft_steps", _DEFAULT.sft_steps, "fine-tuning steps")
_FILES = flags.DEFINE_integer("files", _DEFAULT.files, "standard-library files in the corpus")
_POST_STEPS = flags.DEFINE_integer("post_steps", 0, "steps of each post-training stage "
                                   "(reward, dpo, grpo, ppo; 0: each stage's own default)")
_MODEL = flags.DEFINE_enum("model", "tiny", ["tiny", "smollm2"], "tiny: the whole pipeline "
                           "from pretraining on embedded data; smollm2: a real open model "
                           "(SmolLM2-135M-Instruct) imported, then SFT, DPO, GRPO and eval "
                           "(default workdir runs/demo-smollm2; --stages from "
                           "import,chat,sft,dpo,grpo,eval)")


def main(argv: list[str]) -> None:
    """Run the selected stages in order and print what each achieved."""
    del argv
    logging.set_verbosity(logging.WARNING)
    host_memory.retain_freed_memory()
    stages, names, workdir = STAGES, _STAGES.value, _WORKDIR.value
    if _MODEL.value == "smollm2":
        from llm.demo.smollm2.stages import STAGES as stages

        names = list(stages) if _STAGES.present == 0 else names
        workdir = workdir if _WORKDIR.present else "runs/demo-smollm2"
    unknown = [s for s in names if s not in stages]
    if unknown:
        raise app.UsageError(f"--stages: unknown {unknown}; known: {', '.join(stages)}")
    workdir = pathlib.Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = Context(workdir=workdir, root=ROOT, steps=_STEPS.value, sft_steps=_SFT_STEPS.value,
                  files=_FILES.value, post_steps=_POST_STEPS.value)
    summary = []
    for name in names:
        try:
            summary.append(report.run_stage(stages[name], ctx))
        except (ValueError, RuntimeError) as error:  # bad input: one line, no traceback
            print(f"error: stage {name}: {error}", file=sys.stderr)
            sys.exit(2)
    png = report.plot_curves(workdir)
    report.print_table(summary)
    if png:
        print(f"\ncurves: {png}")


if __name__ == "__main__":
    app.run(main)
