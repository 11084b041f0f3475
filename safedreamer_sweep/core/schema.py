"""The declared type and range of every config key, checked for every cell before the store is touched.

One pydantic model per config group of conf/ (agent, trainer, env, eval, task, store, sweep, report,
cost, the seed) and one for the launcher's options (derived from core/launcher_options.py). Groups are
strict (a bool is not a number, "3" is not an int); keys the code does not read may be added (`+key=`),
and `task`'s external adapter keys are checked by tasks/external/validate.py (its scalar settings
against `ExternalSettings` here).
`check_cell(cfg)` / `check_launcher(params)` return one `Refusal` per bad key: the key, the value, the
allowed range and the fix, as one line each, never a traceback. Environment ids are checked against
the Safety-Gymnasium registry (`check_env_ids`). `malformed_values()` derives, from the schema
itself, one out-of-range or ill-typed value per key (tests/test_schema.py sweeps them).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from safedreamer_sweep.core.launcher_options import LocalOptions, SlurmOptions

_PosInt = Annotated[int, Field(ge=1)]
_NonNegInt = Annotated[int, Field(ge=0)]
_Unit = Annotated[float, Field(ge=0.0, le=1.0)]


class _Group(BaseModel):
    # Extra keys (`+env.eval_seed_base=${seed}`) are allowed: the code ignores what it does not read,
    # and tests interpolate through them; every key the code reads is declared here.
    model_config = ConfigDict(extra="allow", strict=True)


class Lagrangian(_Group):
    cost_limit: float = Field(ge=0, description="per-episode cost budget")
    lr: float = Field(ge=0, le=10, description="multiplier step size")
    init: float = Field(ge=0, description="initial multiplier")


class Uncertainty(_Group):
    enabled: bool
    ensemble: int = Field(ge=1, le=64, description="cost-critic heads (K)")
    kappa: float = Field(ge=0, le=100, description="std weight of the pessimistic cost value")


class Certified(_Group):
    enabled: bool
    backtrack_steps: int = Field(ge=0, le=50)
    decay: float = Field(gt=0, lt=1, description="line-search shrink factor")


class Agent(_Group):
    name: Literal["ppo_lag"]
    hidden: list[Annotated[int, Field(ge=1, le=4096)]] = Field(min_length=1, max_length=16)
    lr: float = Field(gt=0, le=1)
    gamma: float = Field(gt=0, le=1)
    lam: _Unit
    cost_gamma: float = Field(gt=0, le=1)
    cost_lam: _Unit
    clip: float = Field(gt=0, le=1)
    update_epochs: int = Field(ge=1, le=1000)
    minibatches: int = Field(ge=1, le=100_000)
    max_grad_norm: float = Field(gt=0)
    ent_coef: float = Field(ge=0, le=1)
    init_log_std: float = Field(ge=-20, le=2)
    obs_norm: bool
    lagrangian: Lagrangian
    u: Uncertainty
    cert: Certified


class Trainer(_Group):
    total_steps: _PosInt
    num_envs: int = Field(ge=1, le=1024)
    rollout_steps: _PosInt
    log_every_steps: _PosInt
    checkpoint_every_steps: _PosInt
    eval_every_steps: _PosInt
    eval_curve_episodes: _NonNegInt
    keep_checkpoints: _PosInt
    heartbeat_every_s: float = Field(gt=0, le=3600)
    platform: Literal["cpu", "gpu", "cuda", "rocm", "tpu"] | None


class Env(_Group):
    id: str = Field(min_length=1, description="a Safety-Gymnasium env id")
    fast_reset: bool


class Eval(_Group):
    episodes: int = Field(ge=1, le=100_000)
    id_env: str = Field(min_length=1, description="a Safety-Gymnasium env id")
    ood_env: str = Field(min_length=1, description="a Safety-Gymnasium env id")
    ood_proxy: str = Field(min_length=1)


class Task(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)  # external keys: tasks/external/validate.py
    kind: Literal["builtin", "external"]


class ExternalSettings(BaseModel):
    """The scalar settings of `task.kind: external` (conf/task/external.yaml documents each)."""

    model_config = ConfigDict(extra="ignore", strict=True)
    total_steps: int = Field(gt=0)
    probe_every_s: float = Field(2.0, gt=0, le=3600)
    stop_grace_s: float = Field(10.0, ge=0, le=3600)
    stderr_tail_lines: int = Field(40, ge=0, le=10_000)
    startup_s: float = Field(0.0, ge=0, le=86_400)
    exit_0_is_done: bool = False


class StoreConf(_Group):
    root: str = Field(min_length=1)


class Sweep(_Group):
    ablation_knobs: list[str]
    strict_confounds: bool
    new_variant: bool
    on_complete: list[str]
    retry_failed: bool
    objective: str | None
    code_change: Literal["refuse", "rerun", "accept"] = "refuse"  # cells computed by other code (sweep/verdicts.py)


class Rule(_Group):
    cost_metric: str = Field(min_length=1)
    cost_bound: Literal["ci_high", "mean"]
    return_metric: str = Field(min_length=1)
    min_return_gain: float


class Report(_Group):
    out: str | None
    min_seeds: int = Field(ge=1, le=10_000)
    baseline: str = Field(min_length=1)
    templates: list[str]
    confidence: float = Field(gt=0, lt=1)
    bimodal_gap_ratio: float = Field(gt=0)
    bimodal_metrics: list[str]
    power: float = Field(gt=0, lt=1)
    figures: bool
    rule: Rule


class Cost(_Group):
    per_gpu_hour: float | None = Field(ge=0)
    currency: str = Field(min_length=1)


class Cell(BaseModel):
    """One cell's composed config (hydra.* aside). Groups the config does not have are not checked."""

    model_config = ConfigDict(extra="allow", strict=True)
    seed: int = Field(ge=0, le=2**31 - 1)
    store: StoreConf
    trainer: Trainer | None = None
    agent: Agent | None = None
    env: Env | None = None
    eval: Eval | None = None
    task: Task | None = None
    sweep: Sweep | None = None
    report: Report | None = None
    cost: Cost | None = None


def _launcher_model() -> type[BaseModel]:
    """hydra.launcher.* of both backends, derived from the options' dataclasses
    (core/launcher_options.py): each field's type, default and range, declared there once."""
    fields: dict[str, Any] = {"target_": (str | None, Field(default=None, alias="_target_"))}
    for options in (LocalOptions, SlurmOptions):
        for f in dataclasses.fields(options):
            if f.name in fields:
                continue
            typ = f.metadata.get("schema_type") or f.type
            default = ({"default_factory": f.default_factory} if f.default_factory is not dataclasses.MISSING
                       else {"default": f.default})
            fields[f.name] = (typ, Field(**default, **f.metadata.get("bounds", {})))
    return create_model("Launcher", __config__=ConfigDict(extra="forbid", strict=True), **fields)


Launcher = _launcher_model()


# ----------------------------------------------------------------------------- refusals


@dataclass(frozen=True)
class Refusal:
    """One key that is not acceptable, and how to fix it."""

    key: str
    value: Any
    allowed: str
    fix: str

    def __str__(self) -> str:
        return f"{self.key}={self.value!r} is not allowed: must be {self.allowed}. Fix: {self.fix}"


def _leaf_schemas(schema: dict, defs: dict, prefix: str = "") -> Iterator[tuple[str, dict]]:
    """(dotted key, the json schema of its value) for every leaf of a model's json schema."""
    if "$ref" in schema:
        schema = defs[schema["$ref"].split("/")[-1]]
    options = schema.get("anyOf")
    if options and any("$ref" in o for o in options):  # an optional group
        schema = defs[next(o for o in options if "$ref" in o)["$ref"].split("/")[-1]]
    if schema.get("type") == "object" and "properties" in schema:
        for name, sub in schema["properties"].items():
            yield from _leaf_schemas(sub, defs, f"{prefix}{name}.")
        return
    yield prefix.rstrip("."), schema


def _allowed_text(schema: dict) -> str:
    """`an integer >= 1 and <= 64`, `one of ['cpu', 'gpu']`, `a boolean (true/false)`, ..."""
    options = schema.get("anyOf")
    if options:
        return " or ".join(_allowed_text(o) for o in options)
    if "enum" in schema or "const" in schema:
        return f"one of {schema.get('enum', [schema.get('const')])}"
    kind = {"integer": "an integer", "number": "a number", "boolean": "a boolean (true/false)", "string": "a string",
            "array": "a list", "object": "a mapping", "null": "null"}.get(schema.get("type", ""), "a value")
    bounds = [f"{op} {schema[k]}" for k, op in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="),
                                                ("exclusiveMaximum", "<")) if k in schema]
    if "minLength" in schema:
        bounds.append(f"of length >= {schema['minLength']}")
    if "minItems" in schema:
        bounds.append(f"with >= {schema['minItems']} items")
    text = " ".join([kind, " and ".join(bounds)]).strip()
    if schema.get("type") == "array" and "items" in schema:
        text += f", each {_allowed_text(schema['items'])}"
    return text


def _example_value(schema: dict) -> Any:
    """A value the schema accepts (for the fix), near its lower bound."""
    options = schema.get("anyOf")
    if options:
        return _example_value(next((o for o in options if o.get("type") != "null"), options[0]))
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    t = schema.get("type")
    if t in ("integer", "number"):
        if "minimum" in schema:
            return schema["minimum"]
        if "exclusiveMinimum" in schema:
            lo = schema["exclusiveMinimum"]
            hi = schema.get("exclusiveMaximum", schema.get("maximum"))
            return (lo + hi) / 2 if hi is not None else (lo + 1 if t == "integer" else lo + 0.5)
        return 0
    if t == "array":
        return [_example_value(schema["items"])] * max(1, schema.get("minItems", 0)) if "items" in schema else []
    return {"boolean": True, "string": "x", "object": {}}.get(t or "")


def refusals(model: type[BaseModel], data: Any, prefix: str) -> list[Refusal]:
    """One Refusal per key of `data` that `model` does not accept (keys named with `prefix`)."""
    try:
        model.model_validate(data)
        return []
    except ValidationError as e:
        schemas = dict(_leaf_schemas(model.model_json_schema(), model.model_json_schema().get("$defs", {})))
        out = []
        for err in e.errors():
            loc = [str(x) for x in err["loc"] if not isinstance(x, int)
                   and x not in ("function-after", "list[int]", "int", "str", "float", "bool", "none")]
            key = ".".join(loc)
            sch = schemas.get(key, {})
            if err["type"] == "extra_forbidden":
                parent = ".".join(loc[:-1])
                known = sorted(k.rsplit(".", 1)[-1] for k in schemas if k.startswith(parent + ".") and
                               k.count(".") == key.count("."))
                out.append(Refusal(prefix + key, err.get("input"), f"a declared key (the schema has no `{loc[-1]}`)",
                                   f"remove it, or use one of {known}" if known else "remove it"))
                continue
            allowed = _allowed_text(sch) if sch else err["msg"]
            example = _example_value(sch) if sch else None
            fix = (f"set {prefix}{key} to {allowed}, e.g. {prefix}{key}={_override(example)}" if sch
                   else f"{err['msg']}")
            out.append(Refusal(prefix + key, _refused_value(data, err), allowed, fix))
        # one refusal per key (a union reports each branch)
        seen: dict[str, Refusal] = {}
        for r in out:
            seen.setdefault(r.key, r)
        return list(seen.values())


def _refused_value(data: Any, err: Any) -> Any:
    """The value of the refused key as the user wrote it: for an item of a list, the whole list
    (`agent.hidden=[0, 64]`, not `agent.hidden=0`)."""
    loc = list(err["loc"])
    index = next((i for i, x in enumerate(loc) if isinstance(x, int)), None)
    if index is None:
        return err.get("input")
    node = data
    for part in loc[:index]:
        if not isinstance(node, Mapping) or part not in node:
            return err.get("input")
        node = node[part]
    return node


def _override(v: Any) -> str:
    """A value as a Hydra command-line override writes it (no spaces, so the shell keeps it one word)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_override(x) for x in v) + "]"
    return str(v)


def _plain(cfg: Any) -> Any:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(cfg, DictConfig):  # hydra.* is the launcher's business (and needs Hydra to resolve)
        return {str(k): _plain(cfg[k]) for k in cfg if k != "hydra"}
    if isinstance(cfg, ListConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def check_cell(cfg: Any) -> list[Refusal]:
    """Every key of one cell's composed config against the schema (hydra.* is not the cell's)."""
    data = dict(_plain(cfg))
    data.pop("hydra", None)
    return refusals(Cell, data, "")


def check_launcher(params: Mapping[str, Any]) -> list[Refusal]:
    """hydra.launcher.* against the schema."""
    return refusals(Launcher, dict(_plain(params)), "hydra.launcher.")


_LIST_IDS = ("import json, gymnasium, safety_gymnasium; "
             "print(json.dumps(sorted(k for k in gymnasium.registry if k.startswith('Safety'))))")


_IDS: concurrent.futures.Future | None = None
_IDS_LOCK = threading.Lock()


def prefetch_safety_gymnasium_ids() -> None:
    """Start reading Safety-Gymnasium's env ids in the background (a child interpreter, ~2 CPU-s), so
    that the launcher composes and plans meanwhile instead of waiting for it before the plan."""
    global _IDS
    with _IDS_LOCK:
        if _IDS is None:
            pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sds-env-ids")
            _IDS = pool.submit(_list_safety_gymnasium_ids)
            pool.shutdown(wait=False)


def _safety_gymnasium_ids() -> frozenset[str]:
    """Every env id Safety-Gymnasium registers, read once per process in a child interpreter (~2 s):
    importing it here would load MuJoCo and gymnasium-robotics into the launcher for good."""
    prefetch_safety_gymnasium_ids()
    assert _IDS is not None
    return _IDS.result()


def _list_safety_gymnasium_ids() -> frozenset[str]:
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _LIST_IDS], capture_output=True, text=True, check=False, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"cannot list Safety-Gymnasium's env ids (import safety_gymnasium failed: "
                           f"{out.stderr.strip().splitlines()[-1:]}). Fix: bash scripts/venv.sh")
    return frozenset(json.loads(out.stdout.strip().splitlines()[-1]))


def check_env_ids(cfg: Any) -> list[Refusal]:
    """env.id, eval.id_env and eval.ood_env of a builtin-trainer cell against Safety-Gymnasium's registry."""
    import difflib

    data = _plain(cfg)
    if (data.get("task") or {}).get("kind", "builtin") != "builtin":
        return []
    ids = _safety_gymnasium_ids()
    out = []
    for key, value in (("env.id", (data.get("env") or {}).get("id")), ("eval.id_env", (data.get("eval") or {}).get("id_env")),
                       ("eval.ood_env", (data.get("eval") or {}).get("ood_env"))):
        if value is None or value in ids:
            continue
        near = difflib.get_close_matches(str(value), sorted(ids), n=3)
        out.append(Refusal(key, value, f"a Safety-Gymnasium env id ({len(ids)} registered)",
                           f"e.g. {key}={near[0]}" + (f" (close: {', '.join(near)})" if near else "")
                           if near else f"e.g. {key}=SafetyPointGoal1-v0"))
    return out


def malformed_values() -> list[tuple[str, str, Any]]:
    """(schema, dotted key, a value the schema refuses) for every leaf key of Cell and Launcher,
    derived from the json schema: below the minimum, above the maximum, outside the enum, or of the
    wrong type."""
    out = []
    for name, model in (("cell", Cell), ("launcher", Launcher)):
        full = model.model_json_schema(by_alias=True)
        for key, sch in _leaf_schemas(full, full.get("$defs", {})):
            if key == "_target_":
                continue
            out.append((name, key, _bad(sch)))
            item = sch.get("items")
            if sch.get("type") == "array" and item and item.get("type") in ("integer", "number"):
                out.append((name, key, [*[_example_value(item)] * max(0, sch.get("minItems", 1) - 1), _bad(item)]))
    return out


def _bad(schema: dict) -> Any:
    options = [o for o in schema.get("anyOf", []) if o.get("type") != "null"]
    if options:
        schema = options[0] if len(options) == 1 else {}
    if "enum" in schema or "const" in schema:
        return "not-a-choice"
    t = schema.get("type")
    if t in ("integer", "number"):
        if "minimum" in schema:
            return schema["minimum"] - 1
        if "exclusiveMinimum" in schema:
            return schema["exclusiveMinimum"]
        if "maximum" in schema:
            return schema["maximum"] + 1
        if "exclusiveMaximum" in schema:
            return schema["exclusiveMaximum"]
        return "not-a-number"
    if t == "string":
        return "" if schema.get("minLength") else 12345
    if t == "boolean":
        return "maybe"
    if t == "array":
        return [] if schema.get("minItems") else "not-a-list"
    return 3.5  # a mapping or a union: a float is none of them
