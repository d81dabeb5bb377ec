"""Experiment configs: one YAML file per model x dataset, ``key.sub=value`` overrides, validation, defaults.

A config has five sections (only ``model.name`` and ``data`` are required)::

    model:                        # kseg.create_model(name, num_classes=..., input_shape=..., **rest)
      name: unet                  # a name from kseg.list_models(); every other key goes to the builder,
      aux_weight: 0.4             #   except aux_weight: the loss weight of an auxiliary head (models with aux_head)
    data: {...}                   # checked by kseg.data.validate_data_config (instance models, e.g. maskrcnn:
                                  #   kseg.instance.data.validate_instance_data_config)
    loss: {ce: 1.0, dice: 1.0}    # spec for kseg.losses.build_loss (a name, {name: weight}, or a list);
                                  #   none for instance models, which train with their own losses
    train:
      epochs: 10
      batch_size: 8               # per replica; the global batch is batch_size x replicas
      steps_per_epoch: null       # null: ceil(training samples / global batch)
      val_every: 1                # validate every N epochs (and always after the last one)
      optimizer: {name: adam, lr: 0.001, weight_decay: 0.0, momentum: 0.9}
      schedule: {name: cosine, warmup_epochs: 0}
      mixed_precision: false      # true / float16: mixed float16 (GPUs); bfloat16: mixed bfloat16 (CPUs with
                                  #   AVX512_BF16 or AMX, and TPUs); variables stay float32
      strategy: {name: default, devices: null}
      seed: 0
      time_budget_min: null       # stop cleanly after N minutes; the lr decay is resized to end there
      checkpoint_every_steps: 200 # mid-epoch backup for resuming
      trainer:                    # standard, or adversarial (Luc et al. 2016; kseg.train.adversarial)
        name: standard
        weight: 0.1               # adversarial only: lambda, the adversarial term's weight in the segmentor loss
        encoding: product         #   discriminator input: product (image x each class map) or basic
        filters: 32               #   discriminator width
        lr: 1e-4                  #   discriminator learning rate (Adam, constant)
    output:
      dir: null                   # null: runs/<config file stem>

Shorthands: ``optimizer: sgd``, ``schedule: poly``, ``strategy: mirrored`` and ``trainer: adversarial`` stand for
``{name: ...}``.
Floats may be written ``1e-3`` (plain YAML 1.1 would read that as a string).

A relative ``data.root`` resolves against the current working directory when it exists there, else against the
config file's folder, so a config runs both from the repository root and from anywhere else. ``output.dir`` is
relative to the current directory.

Example:
    >>> cfg = load_config("configs/unet_membrane-512x512.yaml", ["train.epochs=3", "train.optimizer.lr=3e-4"])
    >>> cfg["train"]["epochs"]
    3
"""

import copy
import difflib
import inspect
import os
import re
from dataclasses import dataclass

import yaml

from kseg.errors import ConfigError

__all__ = ["load_config", "parse_override", "dump_config", "SCHEMA"]

_REQUIRED = object()


@dataclass(frozen=True)
class Field:
    """One scalar setting: accepted types, default, and the allowed values."""

    types: tuple
    default: object = _REQUIRED
    choices: tuple = ()
    min: float = None
    max: float = None
    nullable: bool = False

    def expected(self):
        names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list"}
        parts = ["a number" if set(self.types) == {int, float} else " or ".join(names[t] for t in self.types)]
        if self.choices:
            parts = ["one of " + ", ".join(str(c).lower() if isinstance(c, bool) else str(c) for c in self.choices)]
        if self.min is not None and self.max is not None:
            parts.append(f"in [{self.min}, {self.max}]")
        elif self.min is not None:
            parts.append(f">= {self.min}")
        if self.nullable:
            parts.append("or null")
        return " ".join(parts)


_NUM = (int, float)

# Sections whose keys are fixed. ``model``, ``data`` and ``loss`` are open: their owners validate them.
SCHEMA = {
    "train": {
        "epochs": Field((int,), 10, min=1),
        "batch_size": Field((int,), 8, min=1),
        "steps_per_epoch": Field((int,), None, min=1, nullable=True),
        "val_every": Field((int,), 1, min=1),
        "optimizer": {
            "name": Field((str,), "adam", choices=("adam", "adamw", "sgd")),
            "lr": Field(_NUM, 1e-3, min=0),
            "weight_decay": Field(_NUM, 0.0, min=0),
            "momentum": Field(_NUM, 0.9, min=0, max=1),
        },
        "schedule": {
            "name": Field((str,), "cosine", choices=("cosine", "constant", "poly")),
            "warmup_epochs": Field(_NUM, 0, min=0),
        },
        "mixed_precision": Field((bool, str), False, choices=(False, True, "float16", "bfloat16")),
        "strategy": {
            "name": Field((str,), "default", choices=("default", "mirrored", "multi_worker")),
            "devices": Field((list,), None, nullable=True),
        },
        "seed": Field((int,), 0, min=0),
        "time_budget_min": Field(_NUM, None, min=0, nullable=True),
        "checkpoint_every_steps": Field((int,), 200, min=1),
        "trainer": {
            "name": Field((str,), "standard", choices=("standard", "adversarial")),
            "weight": Field(_NUM, 0.1, min=0),
            "encoding": Field((str,), "product", choices=("product", "basic")),
            "filters": Field((int,), 32, min=1),
            "lr": Field(_NUM, 1e-4, min=0),
        },
    },
    "output": {"dir": Field((str,), None, nullable=True)},
}
_SECTIONS = ("model", "data", "loss", "train", "output")
_SHORTHAND = ("train.optimizer", "train.schedule", "train.strategy", "train.trainer")
_DEFAULT_LOSS = {"ce": 1.0, "dice": 1.0}


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float, as YAML 1.2 and Python do."""


_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _suggest(key, valid, what="valid keys"):
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f"; did you mean {match[0]!r}?" if match else ""
    return f"{hint}; {what}: {', '.join(valid)}"


def parse_override(text):
    """Splits ``"a.b=value"`` into ``(["a", "b"], value)``, the value read as a YAML scalar."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} must look like section.key=value, e.g. train.epochs=5")
    try:
        value = yaml.load(raw, Loader=_Loader) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: cannot read the value as YAML ({e})") from None
    return key.strip().split("."), value


def _expand_shorthands(cfg):
    for dotted in _SHORTHAND:
        section, key = dotted.split(".")
        node = cfg.get(section)
        if isinstance(node, dict) and isinstance(node.get(key), str):
            node[key] = {"name": node[key]}


def _apply_override(cfg, path, value, text):
    node = cfg
    for i, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(path[: i + 1])
            raise ConfigError(f"override {text!r}: {where} is {child!r}, not a mapping")
        node = child
    node[path[-1]] = value


def _check_field(field, value, where):
    if value is None:
        if field.nullable:
            return None
        raise ConfigError(f"{where}: expected {field.expected()}, got null")
    # bool is an int subclass: a ``true`` epoch count is a typo, not the number 1.
    ok = isinstance(value, field.types) and not (isinstance(value, bool) and bool not in field.types)
    if not ok:
        raise ConfigError(f"{where}: expected {field.expected()}, got {value!r} ({type(value).__name__})")
    if field.choices and value not in field.choices:
        hint = difflib.get_close_matches(str(value), [str(c) for c in field.choices], n=1)
        hint = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ConfigError(f"{where}: expected {field.expected()}, got {value!r}{hint}")
    if (field.min is not None and value < field.min) or (field.max is not None and value > field.max):
        raise ConfigError(f"{where}: expected {field.expected()}, got {value!r}")
    return value


def _validate_section(schema, node, prefix, origin):
    if node is None:
        node = {}
    if not isinstance(node, dict):
        raise ConfigError(f"{origin(prefix)}: expected a mapping, got {node!r}")
    unknown = sorted(set(node) - set(schema))
    if unknown:
        key = unknown[0]
        raise ConfigError(f"{origin(f'{prefix}.{key}')}: unknown key {key!r}{_suggest(key, list(schema))}")
    out = {}
    for key, spec in schema.items():
        where = f"{prefix}.{key}"
        if isinstance(spec, dict):
            out[key] = _validate_section(spec, node.get(key), where, origin)
        elif key in node:
            out[key] = _check_field(spec, node[key], origin(where))
        elif spec.default is _REQUIRED:
            raise ConfigError(f"{origin(where)}: missing; expected {spec.expected()}")
        else:
            out[key] = copy.deepcopy(spec.default)
    return out


def _validate_model(node, origin):
    from kseg.models.registry import get_builder, list_models

    if not isinstance(node, dict) or not isinstance(node.get("name"), str):
        raise ConfigError(f"{origin('model.name')}: missing; expected one of {', '.join(list_models())}")
    name = node["name"]
    models = list_models()
    if name not in models:
        raise ConfigError(f"{origin('model.name')}: unknown model {name!r}{_suggest(name, models, 'available')}")
    if "num_classes" in node:
        raise ConfigError(f"{origin('model.num_classes')}: set data.num_classes instead (the loss and metrics "
                          "need it too)")
    params = inspect.signature(get_builder(name)).parameters
    if "aux_weight" in node:
        # Deep supervision: the trainer builds the model with its auxiliary head and weights the head's loss.
        if "aux_head" not in params:
            raise ConfigError(f"{origin('model.aux_weight')}: {name} has no auxiliary head; remove aux_weight")
        weight = node["aux_weight"]
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise ConfigError(f"{origin('model.aux_weight')}: expected a number >= 0, got {weight!r}")
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        # keras_module is for the exporter, aux_head for the trainer (set through aux_weight).
        valid = [p for p in params if p not in ("num_classes", "keras_module", "aux_head")]
        valid += ["aux_weight"] if "aux_head" in params else []
        for key in node:
            if key != "name" and key not in valid:
                raise ConfigError(f"{origin(f'model.{key}')}: {name} has no argument {key!r}"
                                  f"{_suggest(key, ['name', *valid])}")
    return dict(node)


def _validate_loss(spec, data, path, overrides):
    from kseg.losses import build_loss

    try:
        build_loss(spec, data["num_classes"], data["ignore_index"])
    except ConfigError as e:
        by = f" (overrides: {', '.join(overrides)})" if overrides else ""
        raise ConfigError(f"{path}: loss: {e}{by}") from None
    return spec


def load_config(path, overrides=()):
    """Reads, overrides, validates and completes an experiment config.

    Args:
        path: the YAML file.
        overrides: ``"section.key=value"`` strings; values are YAML scalars (``train.epochs=5``,
            ``train.mixed_precision=true``, ``train.strategy=mirrored``).

    Returns:
        A plain dict with every section and default filled in; data paths are absolute.

    Raises:
        ConfigError: naming the file (or the override), the key and what is expected.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} not found")
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.load(f, Loader=_Loader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    except UnicodeDecodeError:
        hint = " (a model file? pass it with --model)" if path.endswith((".keras", ".tflite", ".h5")) else ""
        raise ConfigError(f"{path}: not a text file; expected an experiment YAML file (see configs/){hint}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections ({', '.join(_SECTIONS)}), got {type(raw).__name__}")
    cfg = copy.deepcopy(raw)
    _expand_shorthands(cfg)
    overridden = {}
    for text in overrides:
        keys, value = parse_override(text)
        _apply_override(cfg, keys, value, text)
        overridden[".".join(keys)] = text
    _expand_shorthands(cfg)

    def origin(key):
        """Names where a bad key came from: the override that set it, else the file."""
        for dotted, text in overridden.items():
            if key == dotted or key.startswith(dotted + ".") or dotted.startswith(key + "."):
                return f"{path}: override {text!r}: {key}"
        return f"{path}: {key}"

    unknown = sorted(set(cfg) - set(_SECTIONS))
    if unknown:
        key = unknown[0]
        raise ConfigError(f"{origin(key)}: unknown section {key!r}{_suggest(key, list(_SECTIONS))}")
    if "data" not in cfg:
        raise ConfigError(f"{path}: missing section 'data' (the dataset to train on)")

    out = {name: _validate_section(SCHEMA[name], cfg.get(name), name, origin) for name in ("train", "output")}
    trainer = out["train"]["trainer"]
    # A resolved config (run.yaml) lists every option with its default; only a changed one is a mistake.
    changed = [k for k, f in SCHEMA["train"]["trainer"].items() if k != "name" and trainer[k] != f.default]
    if trainer["name"] == "standard" and changed:
        raise ConfigError(f"{origin(f'train.trainer.{changed[0]}')}: an option of the adversarial trainer; set "
                          "train.trainer.name: adversarial, or remove it")
    out["model"] = _validate_model(cfg.get("model"), origin)

    def section_overrides(name):
        return [text for key, text in overridden.items() if key.split(".")[0] == name]

    from kseg.models.registry import model_task

    instance = model_task(out["model"]["name"]) == "instance"
    out["data"] = _validate_data(cfg["data"], path, section_overrides("data"), instance)
    if instance:
        # Mask R-CNN's losses (RPN, box, class, mask) are part of the model (kseg.instance.losses).
        if cfg.get("loss") is not None:
            raise ConfigError(f"{origin('loss')}: {out['model']['name']} trains with its own losses (RPN, box, "
                              "class and mask); remove the loss section")
        out["loss"] = None
    else:
        loss = copy.deepcopy(cfg["loss"]) if cfg.get("loss") is not None else dict(_DEFAULT_LOSS)
        out["loss"] = _validate_loss(loss, out["data"], path, section_overrides("loss"))
    if out["output"]["dir"] is None:
        out["output"]["dir"] = os.path.join("runs", os.path.splitext(os.path.basename(path))[0])
    if out["train"]["time_budget_min"] is not None and out["train"]["strategy"]["name"] == "multi_worker":
        raise ConfigError(f"{origin('train.time_budget_min')}: not supported with strategy multi_worker "
                          "(workers would have to agree on when to stop); set it to null")
    return {name: out[name] for name in _SECTIONS}


def _validate_data(data, path, overrides, instance=False):
    """The data section, checked by ``kseg.data`` (semantic) or ``kseg.instance.data`` (instance models)."""
    if instance:
        from kseg.instance.data import validate_instance_data_config as validate_data_config
    else:
        from kseg.data import validate_data_config

    try:
        return validate_data_config(copy.deepcopy(data), base_dir=os.path.dirname(os.path.abspath(path)))
    except ConfigError as e:
        by = f" (overrides: {', '.join(overrides)})" if overrides else ""
        raise ConfigError(f"{path}: {e}{by}") from None


def dump_config(cfg, path):
    """Writes a resolved config as YAML (``run.yaml``); ``load_config`` reads it back unchanged."""
    from export.convert import write_atomic

    write_atomic(path, yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False).encode("utf-8"))
