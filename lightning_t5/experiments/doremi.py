"""DoReMi as an experiment (`experiment_options.kind: doremi`): reference, proxy and main model as stages.

    doremi_reference   the tasks + corpus on the reference weights (`experiment_options.mixing`, default
                       examples-proportional: size-proportional reference weights, the DoReMi README's advice)
    doremi_proxy       a model of the reference's size trained with Group DRO against the reference's final
                       checkpoint (run key `doremi.reference`, lightning_t5/train/doremi.py) on batches drawn with
                       the same reference weights; writes the time-averaged weights to its folder
                       (`weights.json`, `mixing/doremi.yaml`)
    doremi_main        the main model on those weights (`Stage.weights_from`: read when the stage starts, so its
                       fingerprint holds them), N + M steps, evaluated

Rows: `reference` (the main model on the reference weights: the reference stage itself when the proxy has the main
model's size and budget, else a `doremi_baseline` stage) and `doremi`, whose compute counts the reference and the
proxy runs as well (DoReMi's overhead).

`experiment_options.doremi` keys (all optional): `reference_steps`, `proxy_steps` (default N + M each), `eta`
(default 1), `eps` (default 1e-4), `proxy_model` (a model preset for the reference and the proxy, e.g. `small` under a
`base` main model; null: the run's model).
"""

from __future__ import annotations

import difflib
from typing import Any, Mapping

from lightning_t5.model.config import PRESETS

from .plan import ExperimentConfigError, Row, Stage, _Builder, _positive_int, _tasks, register_kind, row

__all__ = ["DOREMI_KEYS", "plan_doremi"]

DOREMI_KEYS = ("reference_steps", "proxy_steps", "eta", "eps", "proxy_model")


def sub_options(block: Mapping[str, Any], name: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """`experiment_options.<name>` as a dict, unknown keys refused with a suggestion."""
    opts = dict(block.get(name) or {})
    for key in opts:
        if key not in keys:
            close = difflib.get_close_matches(key, keys, n=1)
            raise ExperimentConfigError(f"unknown key experiment_options.{name}.{key}"
                                        + (f" (did you mean {close[0]}?)" if close else "")
                                        + f"; valid: {', '.join(keys)}")
    return opts


def positive_steps(opts: Mapping[str, Any], name: str, key: str, default: int) -> int:
    """`experiment_options.<name>.<key>`: a positive number of steps, `default` when unset."""
    value = opts.get(key)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ExperimentConfigError(f"experiment_options.{name}.{key} must be a positive integer of steps, "
                                    f"got {value!r}")
    return value


def model_override(preset: str | None, key: str) -> dict[str, Any]:
    """Run-config overrides that swap the model for the preset `preset` (nothing for null)."""
    if preset is None:
        return {}
    if preset not in PRESETS:
        close = difflib.get_close_matches(str(preset), list(PRESETS), n=1)
        raise ExperimentConfigError(f"experiment_options.{key}={preset!r} is not a model preset"
                                    + (f" (did you mean {close[0]}?)" if close else "")
                                    + f"; presets: {', '.join(PRESETS)}")
    return {"model": {**PRESETS[preset], "name": preset}}


def plan_doremi(block: Mapping[str, Any], b: _Builder, mixing: Mapping[str, Any],
                reference_stage: str | None = None) -> list[Row]:
    """Add DoReMi's stages to `b` and return its rows. `reference_stage`: a stage already in `b` to use as the
    reference model (a page that also has a row on the reference weights trains that model once)."""
    tasks = _tasks(block)
    corpus = block.get("corpus_task")
    members = [*tasks, corpus] if corpus else list(tasks)
    total = _positive_int(block, "pretrain_steps") + _positive_int(block, "finetune_steps")
    opts = sub_options(block, "doremi", DOREMI_KEYS)
    ref_steps = positive_steps(opts, "doremi", "reference_steps", total)
    proxy_steps = positive_steps(opts, "doremi", "proxy_steps", total)
    eta, eps = float(opts.get("eta", 1.0)), float(opts.get("eps", 1e-4))
    if eta <= 0 or not 0 <= eps < 1:
        raise ExperimentConfigError(f"experiment_options.doremi: eta must be > 0 and eps in [0, 1), got eta={eta}, "
                                    f"eps={eps}")
    small = model_override(opts.get("proxy_model"), "doremi.proxy_model")
    ref_mixing = dict(mixing) or {"rate": "proportional"}
    if ref_mixing.get("rate") == "explicit" and not ref_mixing.get("weights"):
        raise ExperimentConfigError("experiment_options.mixing.rate=explicit needs experiment_options.mixing.weights "
                                    "(the reference weights)")
    optim = dict(block.get("pretrain_optim") or {})
    mix = b.mixture("all", members)
    shared = not small and ref_steps == total  # the reference is the main-size model on the reference weights
    if reference_stage is not None:
        reference, shared = reference_stage, bool(b.stages[reference_stage].eval_tasks)
    else:
        reference = b.add(Stage(
            name="doremi_reference", mixture=mix, tasks=tuple(members), steps=ref_steps, mixing=ref_mixing,
            optim=optim, eval_tasks=tasks if shared else (), role="multitask" if shared else "reference",
            overrides=small))
    proxy = b.add(Stage(
        name="doremi_proxy", mixture=mix, tasks=tuple(members), steps=proxy_steps, mixing=ref_mixing, optim=optim,
        role="proxy", checkpoint_inputs={"doremi.reference": reference},
        overrides={**small, "doremi": {"eta": eta, "eps": eps}}))
    main = b.add(Stage(
        name="doremi_main", mixture=mix, tasks=tuple(members), steps=total, mixing={"rate": "explicit"}, optim=optim,
        eval_tasks=tasks, role="multitask", weights_from=proxy))
    baseline = reference if shared else b.add(Stage(
        name="doremi_baseline", mixture=mix, tasks=tuple(members), steps=total, mixing=ref_mixing, optim=optim,
        eval_tasks=tasks, role="multitask"))
    return [row(b, "reference", "Reference weights", {t: baseline for t in tasks}),
            row(b, "doremi", "DoReMi weights", {t: main for t in tasks})]


register_kind("doremi", plan_doremi)
