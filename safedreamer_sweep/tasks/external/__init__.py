"""Any training script as a cell (`task=external`): the external-command adapter.

`tasks/run.py` calls `train(cfg, run)` and `evaluate(cfg, run, kind)` from here instead of the
built-in trainer when `cfg.task.kind == "external"`, so planning, claiming, submission, supervision
and retries are the same for both. What the script is and how to read it is declared in `cfg.task`
(conf/task/external.yaml documents every field; conf/task/safedreamer.yaml is a worked example):

- `command`: a template filled with the cell's values (`{seed}`, `{run_dir}`, `{config}`,
  `{resume_flag}`, any config key by dotted path such as `{agent.lr}`), run as a subprocess in its
  own process group with `env` and `cwd`, stdout/stderr teed to `logs/attempt_NN.{out,err}`.
- `probes`: read the script's own files every `probe_every_s` seconds and turn them into env
  steps for `progress.json`, so a run whose metrics file is stale but whose replay grows is seen
  moving, and a run whose probes stop is seen stalled.
- `checkpoint` and `resume_args`: where the script's checkpoint is, and the arguments that make it
  resume from it (added when one exists).
- `knobs`: how each ablation knob reaches the script (arguments and environment variables filled
  from the knob's value per cell); `config_axis_commands` fills a cell's commands so the planner
  can refuse configs that would run the same thing under different labels.
- `eval`: a command per kind (id / ood) and where its results are, mapped onto the eval schema.
- `curves` (optional): the script's metrics rows copied into the run dir's metrics.jsonl, so the
  report draws learning curves.

Modules, one job each (lower ones never import higher ones):
- errors.py: the adapter's two errors (a wrong task config, a failed script).
- templates.py: fill a command template from the cell's values, the environment and the config.
- config.py: `cfg.task` read into `ExternalTask`, its fields and shapes checked.
- cell.py: the task's declarations filled for one cell (values, knobs, env, cwd, probes, eval
  values, the script's newest checkpoint).
- validate.py: `validate_task`, every template and probe checked before anything runs.
- axis.py: the planner's check that configs on the `config` axis run different commands.
- runner.py: run the script as a subprocess (session, death signal, niceness, tee, stop).
- training.py: `train`, resume, run, probes -> heartbeats and checkpoint pointers, the verdict.
- evaluation.py: `evaluate`, run the eval command and return its episodes in the eval schema.

This package re-exports the names the rest of the tree uses.
"""

from safedreamer_sweep.tasks.external.axis import check_config_axis, config_axis_commands
from safedreamer_sweep.tasks.external.errors import ExternalCommandFailed, ExternalTaskError
from safedreamer_sweep.tasks.external.evaluation import evaluate
from safedreamer_sweep.tasks.external.runner import run_command
from safedreamer_sweep.tasks.external.templates import fill_command, fill_template
from safedreamer_sweep.tasks.external.training import train
from safedreamer_sweep.tasks.external.validate import validate_task

__all__ = [
    "ExternalCommandFailed",
    "ExternalTaskError",
    "check_config_axis",
    "config_axis_commands",
    "evaluate",
    "fill_command",
    "fill_template",
    "run_command",
    "train",
    "validate_task",
]
