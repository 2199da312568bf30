"""Recipes: YAML validated once into frozen dataclasses.

An AR recipe (:class:`RecipeConfig`) has the sections ``model`` (the five parts), ``data``,
``train``, ``sample`` and ``eval``, plus ``output`` and an optional token ``cache``; a tokenizer
recipe (:class:`TokenizerRecipeConfig`, top-level ``tokenizer:`` instead of ``model:``) has
``tokenizer``, ``loss``, ``data``, ``train``, ``eval`` and ``output``. A recipe may start with
``extends: other-recipe``. Components are chosen by registered name (``score: {name: energy,
alpha: 1.0}``); the registered class's own ``Config`` dataclass validates the remaining keys.
Every error names the offending key path and, for unknown keys and names, the valid choices. No
dicts travel past this module.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import annotated_types as at
import yaml

from carl.errors import CarlError, FieldError, RecipeError  # noqa: F401 (CarlError: re-exported)
from carl.plugins import recipe_files, registry
from carl.ranges import check_ranges, range_violation


@dataclass(frozen=True)
class Component:
    """A registered component: its name and its own validated config dataclass."""

    name: str
    options: Any = None

    def build(self, kind: str, **context: Any) -> Any:
        return registry(kind).get(self.name)(self.options, **context)


def component(kind: str, default: str | None = None) -> Any:
    meta = {"registry": kind}
    if default is None:
        return field(metadata=meta)
    return field(default_factory=lambda: Component(default, _options_class(kind, default)()), metadata=meta)


def _options_class(kind: str, name: str) -> type:
    cls = registry(kind).get(name)
    return getattr(cls, "Config", _NoOptions)


@dataclass(frozen=True)
class _NoOptions:
    pass


# ---------------------------------------------------------------------------------------------
# The recipe tree


@dataclass(frozen=True)
class BackboneConfig:
    """The transformer: ``width``-wide, ``depth`` blocks, ``heads`` attention heads.
    ``encoder_depth`` > 0 makes it MAR's encoder-decoder (masked orders only): an encoder of that
    many blocks over the condition and the known tokens alone, then ``depth`` decoder blocks
    over all positions with mask tokens; 0 is EAR's decoder-only transformer."""

    width: Annotated[int, at.Ge(1)] = 256
    depth: Annotated[int, at.Ge(1)] = 4
    heads: Annotated[int, at.Ge(1)] = 4
    mlp_ratio: Annotated[float, at.Gt(0)] = 4.0
    dropout: Annotated[float, at.Interval(ge=0, lt=1)] = 0.1
    attn_dropout: Annotated[float, at.Interval(ge=0, lt=1)] = 0.1
    encoder_depth: Annotated[int, at.Ge(0)] = 0

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.width % self.heads:
            raise FieldError("heads", f"{self.heads} does not divide width {self.width}")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    tokenizer: Component = component("tokenizers")
    conditioner: Component = component("conditioners", "none")
    order: Component = component("orders", "masked")
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    score: Component = component("scores", "energy")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation. ``lr`` = ``base_lr`` x ``global_batch`` / 256 unless ``lr`` is given
    (``lr_scaling: sqrt``: x its square root, the rule for Adam; a batch 4x larger then gets 2x the
    rate, not 4x). Warm-up lasts ``warmup_epochs`` but at least ``warmup_steps`` optimizer steps:
    an epoch has fewer steps as the batch grows, and a larger rate needs no shorter warm-up."""

    seed: Annotated[int, at.Ge(0)] = 0
    # Fine-tuning: start from the weights of a model folder, a checkpoint folder, a shipped name or
    # a Hub repo id (the model section must describe the same architecture); not used on --resume.
    init_from: str | None = None
    global_batch: Annotated[int, at.Ge(1)] = 64
    micro_batch: Annotated[int, at.Ge(1)] | None = None  # per device and step; None: global_batch / processes
    epochs: Annotated[float, at.Gt(0)] = 10.0
    max_steps: Annotated[int, at.Ge(1)] | None = None  # overrides epochs
    base_lr: Annotated[float, at.Gt(0)] = 1e-4
    lr: Annotated[float, at.Gt(0)] | None = None
    lr_scaling: Literal["linear", "sqrt"] = "linear"
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_epochs: Annotated[float, at.Ge(0)] = 0.0
    warmup_steps: Annotated[int, at.Ge(0)] = 0
    min_lr: Annotated[float, at.Ge(0)] = 0.0
    weight_decay: Annotated[float, at.Ge(0)] = 0.02
    betas: tuple[Annotated[float, at.Interval(ge=0, lt=1)], Annotated[float, at.Interval(ge=0, lt=1)]] = (0.9, 0.95)
    grad_clip: Annotated[float, at.Gt(0)] | None = 3.0
    head_lr_scale: Annotated[float, at.Gt(0)] = 1.0
    ema_decay: Annotated[float, at.Interval(ge=0, lt=1)] = 0.9999
    # (from_epoch, temperature) pairs, e.g. [[0, 1.0], [750, 0.99]]: EAR's last 50 epochs at 0.99
    train_temperature: tuple[tuple[Annotated[float, at.Ge(0)], Annotated[float, at.Gt(0)]], ...] = ((0.0, 1.0),)
    # auto: bf16 where the device multiplies bf16 natively (carl.training.accel.native_bf16), else no
    mixed_precision: Literal["no", "bf16", "fp16", "auto"] = "no"
    num_workers: Annotated[int, at.Ge(0)] = 0
    compile: bool = False  # torch.compile the backbone and the scoring rule's network (carl.training.accel)
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    log_every: Annotated[int, at.Ge(1)] = 20
    sample_every: Annotated[int, at.Ge(1)] | None = 500
    checkpoint_every: Annotated[int, at.Ge(1)] | None = 500
    keep_checkpoints: Annotated[int, at.Ge(1)] = 2
    skip_nonfinite: Annotated[int, at.Ge(0)] = 0  # non-finite steps whose update may be skipped; 0: the first one stops training
    tracker: Literal["tensorboard", "none"] = "tensorboard"

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass(frozen=True)
class SampleConfig:
    """Generation defaults, used by ``carl sample`` and the training-time sample grids."""

    num_steps: Annotated[int, at.Ge(1)] = 64
    cfg: Annotated[float, at.Ge(0)] = 1.0
    cfg_schedule: Literal["linear", "constant"] = "linear"
    temperature: Annotated[float, at.Ge(0)] = 1.0
    per_row: Annotated[int, at.Ge(1)] = 8
    rows: Annotated[int, at.Ge(1)] = 10
    seed: Annotated[int, at.Ge(0)] = 0

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """Evaluation during training: ``metric`` every ``every_epochs`` epochs (None: never)."""

    every_epochs: Annotated[float, at.Gt(0)] | None = None
    metric: Component = component("metrics", "loss")

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass(frozen=True, kw_only=True)
class RecipeConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: Component = component("datasets")
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: str = "runs/default"
    cache: str | None = None  # a token cache folder (`carl cache`) training reads instead of encoding data; `auto`: the run's own


@dataclass(frozen=True)
class ReconstructionConfig:
    """The tokenizer job's loss, per sample: ``reconstruction`` error (``mse``, ``l1``, or ``bce`` for
    data in [0, 1] with a ``sigmoid`` output), averaged over values, plus ``kl_weight`` x the KL of
    the posterior to N(0, I), averaged over latent values."""

    reconstruction: Literal["mse", "l1", "bce"] = "mse"
    kl_weight: Annotated[float, at.Ge(0)] = 1e-4

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass(frozen=True)
class TokenizerEvalConfig:
    """Held-out reconstruction figures (MSE, PSNR, KL) on ``samples`` items of ``split`` every
    ``every_epochs`` epochs and at the end; the latent normalisation is measured on
    ``normalize_samples`` training items; the reconstruction grid shows ``preview_rows`` pairs of rows."""

    split: str = "validation"
    every_epochs: Annotated[float, at.Gt(0)] | None = 1.0
    samples: Annotated[int, at.Ge(1)] = 1000
    normalize_samples: Annotated[int, at.Ge(1)] = 4096
    preview_rows: Annotated[int, at.Ge(1)] = 2

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass(frozen=True, kw_only=True)
class TokenizerRecipeConfig:
    """A recipe whose top level trains a tokenizer (``tokenizer:`` instead of ``model:``)."""

    tokenizer: Component = component("tokenizers")
    loss: ReconstructionConfig = field(default_factory=ReconstructionConfig)
    data: Component = component("datasets")
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: TokenizerEvalConfig = field(default_factory=TokenizerEvalConfig)
    output: str = "runs/tokenizer"


# ---------------------------------------------------------------------------------------------
# Validation


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Validate ``data`` (parsed YAML) into dataclass ``cls``; errors name the key path."""
    if not isinstance(data, dict):
        raise RecipeError(f"{path or 'recipe'}: expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls, include_extras=True)  # keeps the ranges of Annotated fields
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise RecipeError(_unknown_key(key, path, list(fields)))
    values = {}
    for name, f in fields.items():
        if name not in data:
            continue
        sub = f"{path}.{name}" if path else name
        if "registry" in f.metadata:
            values[name] = _component(f.metadata["registry"], data[name], sub)
        else:
            values[name] = _coerce(hints[name], data[name], sub)
    missing = [n for n, f in fields.items() if n not in values and _has_no_default(f)]
    if missing:
        raise RecipeError(f"{_join(path, missing[0])}: required key is missing")
    try:
        return cls(**values)
    except FieldError as exc:
        raise RecipeError(f"{_join(path, exc.key)}: {exc.message}") from exc
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise RecipeError(f"{path or 'recipe'}: {exc}") from exc


def _has_no_default(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _unknown_key(key: str, path: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(str(key), valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown recipe key '{_join(path, str(key))}'{hint}; valid keys: {', '.join(valid)}"


def _component(kind: str, data: Any, path: str) -> Component:
    if isinstance(data, str):
        data = {"name": data}
    if not isinstance(data, dict) or "name" not in data:
        raise RecipeError(f"{path}: expected a mapping with a 'name' key (available: {', '.join(registry(kind).names())})")
    options = dict(data)
    name = options.pop("name")
    try:
        cls = registry(kind).get(name)
    except KeyError as exc:
        raise RecipeError(f"{path}.name: {exc}") from exc
    config_cls = getattr(cls, "Config", _NoOptions)
    return Component(name, from_dict(config_cls, options, path))


YAML_BOOLS = {False: ("no", "off", "false"), True: ("yes", "on", "true")}


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:  # a typed value with a range: Annotated[float, at.Gt(0)]
        value = _coerce(args[0], value, path)
        if why := range_violation(value, args[1:]):
            raise RecipeError(f"{path}: {why}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _coerce(option, value, path)
            except RecipeError as exc:
                errors.append(str(exc))
        raise RecipeError(errors[0])
    if origin is Literal:
        if isinstance(value, bool):  # YAML 1.1 reads an unquoted no/off/false as False (and yes/on/true as True)
            value = next((a for a in args if isinstance(a, str) and a.lower() in YAML_BOOLS[value]), value)
        if value not in args:
            raise RecipeError(f"{path}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise RecipeError(f"{path}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, str, bool) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    if tp is Any:
        return value
    raise RecipeError(f"{path}: expected {getattr(tp, '__name__', tp)}, got {type(value).__name__} {value!r}")


# ---------------------------------------------------------------------------------------------
# YAML: safe_load that refuses duplicate keys


class DuplicateKeyError(yaml.YAMLError):
    """A mapping gives the same key twice (YAML forbids it; PyYAML would keep the last silently)."""


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` semantics, plus a clear error for a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may override keys on purpose
                continue
            key = self.construct_object(key_node)  # not deep: a recursive key fails as in safe_load
            line = key_node.start_mark.line + 1
            try:
                if key in lines:
                    raise DuplicateKeyError(f"duplicate key '{key}' on line {line} (first given on line {lines[key]})")
                lines[key] = line
            except TypeError:  # an unhashable key: the base class explains that one
                continue
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str) -> Any:
    """Parse YAML like ``yaml.safe_load``, refusing duplicate keys."""
    return yaml.load(text, Loader=UniqueKeyLoader)


# ---------------------------------------------------------------------------------------------
# Serialisation, files, overrides


def to_dict(obj: Any) -> Any:
    """The plain (YAML/JSON-ready) form of a config tree; inverse of :func:`from_dict`."""
    if isinstance(obj, Component):
        return {"name": obj.name, **to_dict(obj.options)}
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [to_dict(v) for v in obj]
    return obj


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a parsed recipe.

    A key may be given once. An override of a component's ``name`` (``model.score.name=gaussian``)
    swaps the component: it starts from the new one's defaults, as a recipe's ``extends`` does,
    and the other overrides of that component apply to the new one, whatever their order.
    """
    parsed = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"override '{item}' is not of the form key.path=value")
        try:
            parsed.append((key.strip(), item, parse_yaml(raw)))
        except yaml.YAMLError as exc:
            raise RecipeError(f"override '{item}': not valid YAML: {exc}") from exc
    seen: dict[str, str] = {}
    for key, item, _ in parsed:
        if key in seen:
            raise RecipeError(f"override '{key}' is given twice ('{seen[key]}' and '{item}'); give it once")
        seen[key] = item
    names_first = sorted(parsed, key=lambda p: not p[0].endswith(".name"))  # stable: the rest keep their order
    for key, item, value in names_first:
        parts = key.split(".")
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if isinstance(child, str):  # `score: energy` shorthand
                child = node[part] = {"name": child}
            if not isinstance(child, dict):
                raise RecipeError(f"override '{item}': '{part}' is not a section")
            node = child
        if parts[-1] == "name" and "name" in node and node["name"] != value:
            node.clear()  # another component: none of the old one's options carry over
        node[parts[-1]] = value
    return data


def resolve_recipe_path(recipe: str | Path) -> Path:
    """A recipe file path, or the name of a shipped recipe (``carl recipes list``)."""
    path = Path(recipe)
    if path.is_file():
        return path
    shipped = recipe_files()
    name = path.name.removesuffix(".yaml")
    if name in shipped:
        return shipped[name]
    raise RecipeError(f"no recipe file or shipped recipe named '{recipe}'; shipped recipes: {', '.join(shipped) or '(none)'}")


def merge_recipe(base: dict, update: dict) -> dict:
    """``update`` laid over ``base``: sections merge key by key, except that a component whose
    ``name`` changes is replaced whole (a ``gmm`` score keeps none of an ``energy`` score's options)."""
    merged = dict(base)
    for key, value in update.items():
        old = merged.get(key)
        old = {"name": old} if isinstance(old, str) and isinstance(value, dict) else old
        value = {"name": value} if isinstance(value, str) and isinstance(old, dict) and "name" in old else value
        if isinstance(value, dict) and isinstance(old, dict) and value.get("name", old.get("name")) == old.get("name"):
            merged[key] = merge_recipe(old, value)
        else:
            merged[key] = value
    return merged


def read_recipe(path: Path, _children: tuple[Path, ...] = ()) -> dict:
    """The parsed recipe file with the recipe it ``extends`` (a path relative to it, or a shipped
    name) merged underneath; the parent's ``output`` is not inherited."""
    try:
        data = parse_yaml(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections, got {type(data).__name__}")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    sibling = path.parent / str(parent)
    parent_path = sibling if sibling.is_file() else resolve_recipe_path(str(parent))
    if parent_path.resolve() in _children + (path.resolve(),):
        raise RecipeError(f"{path}: 'extends: {parent}' makes a cycle")
    base = read_recipe(parent_path, _children + (path.resolve(),))
    base.pop("output", None)
    return merge_recipe(base, data)


def recipe_class(data: dict) -> type:
    """A recipe with a top-level ``tokenizer`` (and no ``model``) trains a tokenizer; any other an AR model."""
    return TokenizerRecipeConfig if "tokenizer" in data and "model" not in data else RecipeConfig


def load_recipe(recipe: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RecipeConfig | TokenizerRecipeConfig:
    """Load (following ``extends``), override and validate a recipe given by path or shipped name."""
    path = resolve_recipe_path(recipe)
    data = read_recipe(path)
    data.setdefault("output", f"runs/{path.stem}")
    data = apply_overrides(data, list(overrides))
    return from_dict(recipe_class(data), data)


def dump_recipe(cfg: RecipeConfig | TokenizerRecipeConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
