"""``synth train``: a user's own ``dspy.Module``, trained and scored on a domain's validated examples.

The module is found in the user's file: ``--module NAME`` (or ``program.module_class``), else the
first ``dspy.Module`` subclass the file defines. Its fields are mapped to the domain's by name:
- inputs: the parameters of its ``forward`` (or, for ``forward(**kwargs)``, the input fields of its
  predictors' signatures);
- outputs: the output fields of its predictors that are domain fields (intermediate fields such as
  ChainOfThought's ``reasoning`` are the module's own business).

Every problem is a :class:`TrainError`, one line naming the file and what to change.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from synth_pipelines.learning.dspy_lm import dspy
from synth_pipelines.learning.program import BatchMetric, GoldPred
from synth_pipelines.spec.model import DomainSpec, ProgramSpec

BUILTIN_METRICS = ("exact_match", "semantic_similarity", "llm_judge")


class TrainError(ValueError):
    """A user program that cannot be used as written (import, class, fields, metric)."""


class UserProgram:
    """A user's module class, with the domain fields it reads and writes."""

    def __init__(self, path: Path, cls: type[dspy.Module], inputs: list[str], outputs: list[str]):
        self.path = path
        self.cls = cls
        self.inputs = inputs
        self.outputs = outputs

    @property
    def name(self) -> str:
        """``<file stem>`` (what ``agent_performance.source`` records as ``train:<name>``)."""
        return self.path.stem

    def instantiate(self) -> dspy.Module:
        try:
            return self.cls()
        except Exception as e:  # the user's constructor: anything can go wrong
            raise TrainError(
                f"{self.path}: {self.cls.__name__}() failed: {type(e).__name__}: {e} "
                "(the module must be constructible with no arguments)"
            ) from None


def import_program_file(path: Path) -> Any:
    """Import a Python file as a fresh module (its own name, so two files never collide)."""
    if not path.is_file():
        raise TrainError(f"program file {path} does not exist")
    if path.suffix != ".py":
        raise TrainError(f"program file {path} is not a .py file")
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:10]
    name = f"synth_user_program_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise TrainError(f"program file {path} cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the user's code: report it, whatever it is
        sys.modules.pop(name, None)
        raise TrainError(f"program file {path} failed to import: {type(e).__name__}: {e}") from None
    return module


def find_module_class(module: Any, path: Path, name: str | None) -> type[dspy.Module]:
    """The ``dspy.Module`` subclass named ``name``, or the first one the file defines."""
    defined = [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj) and issubclass(obj, dspy.Module) and obj.__module__ == module.__name__
    ]
    if name is not None:
        for cls in defined:
            if cls.__name__ == name:
                return cls
        names = [c.__name__ for c in defined] or "none"
        raise TrainError(f"{path}: no dspy.Module subclass named {name!r}; defined: {names}")
    if not defined:
        raise TrainError(f"{path}: defines no dspy.Module subclass (write one, or pass --module NAME)")
    return defined[0]


def _forward_inputs(instance: dspy.Module) -> list[str] | None:
    # Read from the class: DSPy warns when an instance's forward is touched directly.
    params = list(inspect.signature(type(instance).forward).parameters.values())[1:]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def map_fields(instance: dspy.Module, spec: DomainSpec, path: Path) -> tuple[list[str], list[str]]:
    """(inputs, outputs) of the module as domain field names; a TrainError lists what is missing."""
    predictors = [p for _, p in instance.named_predictors()]
    if not predictors:
        raise TrainError(f"{path}: {type(instance).__name__} has no DSPy predictor (dspy.Predict, ...)")
    signature_inputs = list(dict.fromkeys(n for p in predictors for n in p.signature.input_fields))
    signature_outputs = list(dict.fromkeys(n for p in predictors for n in p.signature.output_fields))
    inputs = _forward_inputs(instance) or signature_inputs
    known = list(spec.fields)
    missing = [n for n in inputs if n not in spec.fields]
    if missing:
        raise TrainError(
            f"{path}: {type(instance).__name__} needs inputs {missing} that domain {spec.domain!r} does not "
            f"have; its fields: {known}"
        )
    outputs = [n for n in signature_outputs if n in spec.fields and n not in inputs]
    if not outputs:
        raise TrainError(
            f"{path}: none of {type(instance).__name__}'s outputs {signature_outputs} is a field of domain "
            f"{spec.domain!r} to score against; its fields: {known}"
        )
    return inputs, outputs


def load_user_program(path: Path, spec: DomainSpec, class_name: str | None = None) -> UserProgram:
    """Import ``path``, pick its module class and map its fields to ``spec``'s."""
    module = import_program_file(path)
    cls = find_module_class(module, path, class_name)
    inputs, outputs = map_fields(UserProgram(path, cls, [], []).instantiate(), spec, path)
    return UserProgram(path, cls, inputs, outputs)


def user_metric(reference: str, program_file: Path) -> BatchMetric:
    """A metric function of the user's, as a batch metric. ``reference`` is ``file.py:function``
    or ``function`` (in the program file); it is called DSPy's way, ``fn(example, prediction)``,
    and its result (a bool or a number) is clipped to 0..1."""
    file_part, _, function = reference.rpartition(":")
    path = Path(file_part) if file_part else program_file
    module = import_program_file(path)
    fn = getattr(module, function, None)
    if not callable(fn):
        raise TrainError(f"metric {reference!r}: {path} defines no function {function!r}")
    scorer: Callable[..., Any] = fn

    def metric(pairs: Sequence[GoldPred]) -> list[float]:
        out = []
        for gold, pred in pairs:
            try:
                value = float(scorer(dspy.Example(**gold), dspy.Prediction(**pred)))
            except Exception as e:  # the user's metric failed: say which and where
                raise TrainError(f"metric {reference!r} raised {type(e).__name__}: {e}") from None
            out.append(min(1.0, max(0.0, value)))
        return out

    return metric


def training_spec(
    base: ProgramSpec | None,
    program: UserProgram,
    *,
    metric: str,
    optimizer: str,
    train_fraction: float | None,
) -> ProgramSpec:
    """The ProgramSpec of a training run: the user module's fields, the chosen metric and optimizer,
    the rest (demos, samples) from the spec's program section when it has one."""
    settings = base.model_dump() if base is not None else {}
    settings.update(
        inputs=program.inputs,
        outputs=program.outputs,
        metric=metric if metric in BUILTIN_METRICS else "exact_match",  # a user metric replaces it
        optimizer=optimizer,
        module=str(program.path),
    )
    if train_fraction is not None:
        settings["train_fraction"] = train_fraction
    return ProgramSpec.model_validate(settings)


def train_user_program(
    spec: DomainSpec,
    rows: list[dict[str, Any]],
    client: Any,
    program_file: Path,
    *,
    embed: Callable[[list[str]], Any] | None,
    class_name: str | None = None,
    metric: str | None = None,
    optimizer: str | None = None,
    iterations: int | None = None,
    train_fraction: float | None = None,
    threads: int = 1,
) -> tuple[UserProgram, Any]:
    """Load the user's module, compile it on the train split and score it on held-out examples
    (:func:`~synth_pipelines.learning.program.train_and_score`). ``metric`` and ``optimizer``
    default to the spec's program section (semantic_similarity and labeled_few_shot without one)."""
    from synth_pipelines.learning.program import train_and_score

    base = spec.program
    program = load_user_program(program_file, spec, class_name or (base.module_class if base else None))
    metric = metric or (base.metric if base else "semantic_similarity")
    optimizer = optimizer or (base.optimizer if base else "labeled_few_shot")
    if optimizer not in ("labeled_few_shot", "bootstrap_few_shot", "miprov2"):
        raise TrainError(
            f"unknown optimizer {optimizer!r}; use labeled_few_shot, bootstrap_few_shot or miprov2"
        )
    custom = None if metric in BUILTIN_METRICS else user_metric(metric, program_file)
    settings = training_spec(base, program, metric=metric, optimizer=optimizer, train_fraction=train_fraction)
    run = train_and_score(
        spec,
        rows,
        client,
        settings,
        embed=embed,
        student=program.instantiate(),
        threads=threads,
        iterations=iterations,
        metric=custom,
    )
    run.score.metric = metric
    return program, run


def load_trained(
    program_file: Path, state: Path, spec: DomainSpec, class_name: str | None = None
) -> dspy.Module:
    """A saved training run's module, ready to predict: the user's class with the saved state."""
    from synth_pipelines.learning.program import load_program

    program = load_user_program(program_file, spec, class_name)
    return load_program(spec, state, program.instantiate())
