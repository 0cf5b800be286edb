"""`--help` and `--version` of the command-line apps, written for probe_lab rather than Hydra's generic
page: each config group's options and each setting of the config as composed with the given overrides,
one line of description each, then the other entry points and Hydra's own flags.

Descriptions come from the YAML files under conf/ (an option's leading comment, a key's trailing
`# comment`); a setting no YAML file lists takes its schema field's `metadata["help"]`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator, Sequence
from importlib import resources
from typing import Any

from hydra import compose, initialize_config_module
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from probe_lab.settings.data import StreamingSettings
from probe_lab.settings.schema import register_configs
from probe_lab.version import version_line

CONFIG_MODULE = "probe_lab.conf"
TRAINING_GROUPS = ("backend", "device", "data", "precision", "model", "probe", "eval", "trainer", "callbacks", "logger")
SWEEP_GROUPS = ("hydra/launcher", "hydra/sweeper")
# The `name` of these groups repeats the option chosen; listing it again would say nothing.
NAMED_BY_OPTION = ("backend", "device", "precision", "model")
# Lightning's pieces, listed by entry rather than key by key.
OPEN_GROUPS = ("trainer", "callbacks", "logger")

LABELS = ("data.y", "data.labels")  # predict scores unlabelled data too
# Data settings of training only: predict scores every row, streams nothing and refuses NaN/Inf rows.
NOT_READ_BY_PREDICT = (
    "data.source",
    "data.validation_split",
    "data.test_split",
    "data.drop_nonfinite",
    *(f"data.{f.name}" for f in dataclasses.fields(StreamingSettings)),
)

_TRAILING_COMMENT = re.compile(r"^([A-Za-z_][\w.-]*):.*?\s#\s?(.*)$")
_REQUIRED = re.compile(r"^([A-Za-z_][\w.-]*):\s*\?\?\?")  # `key: ???`: the user must give it

OTHER_COMMANDS = """\
Other commands:
  python -m probe_lab.extract model.path=MODEL dataset.path=TEXTS.csv output=STORE [layers=[...]]
                         activations of a Hugging Face model over labelled texts, into a store
  python -m probe_lab.predict probe=RUN_FOLDER data=npy data.x=X.npy [data.y=Y.npy]
                         score activations with a trained probe (--help for its settings)
  python -m probe_lab.convert SOURCE STORE --labels LABELS [--dtype float16|bfloat16|float32]
                         write an activation store from an .npy file or a folder of tensor files
  probe-lab, probe-lab-predict, probe-lab-convert, probe-lab-extract   the same commands as console scripts"""

SWEEP_FLAG = """\
  -m KEY=A,B ...         a sweep: one job per combination (hydra/launcher=parallel | slurm,
                         hydra/sweeper=regularization_search; see README)"""
HYDRA_FLAGS = """\
  --cfg job              print the composed config and exit;  --info  where each part came from
  hydra.run.dir=PATH     the run folder;  hydra.sweep.dir=PATH  a sweep's folder
  --hydra-help           Hydra's own help"""


def answer_help_or_version(argv: Sequence[str], app: str, help_for: Callable[[Sequence[str]], str]) -> bool:
    """Print the app's help (`--help`/`-h`, for the config composed with the other arguments) or its
    version (`--version`) and return True; False when the arguments ask for neither."""
    if "--version" in argv:
        print(version_line(app))
        return True
    if "--help" in argv or "-h" in argv:
        print(help_for([arg for arg in argv if arg not in ("--help", "-h") and not arg.startswith("-")]))
        return True
    return False


def training_help(overrides: Sequence[str]) -> str:
    """`python -m probe_lab [overrides] --help`."""
    cfg, choices, problem = _composed("config", overrides)
    lines = [
        f"{version_line('probe_lab')}: train a linear probe on a language model's activations",
        "",
        "usage: python -m probe_lab [group=option ...] [key=value ...]",
        "",
        "Config groups (group=option; * the one chosen):",
        *_group_lines([*TRAINING_GROUPS, "experiment"], choices),
        "",
        "Sweeps and launchers (with -m):",
        *_group_lines(SWEEP_GROUPS, choices),
        "",
        "Settings (key=value) as composed" + (f" with {' '.join(overrides)}:" if overrides else ":"),
        *_setting_lines(cfg, choices, app_config="config"),
        "",
        OTHER_COMMANDS,
        "",
        "Hydra:",
        SWEEP_FLAG,
        HYDRA_FLAGS,
    ]
    return "\n".join(lines if problem is None else [f"(overrides not applied: {problem})", *lines])


def predict_help(overrides: Sequence[str]) -> str:
    """`python -m probe_lab.predict [overrides] --help`."""
    cfg, choices, problem = _composed("predict", overrides)
    lines = [
        f"{version_line('probe_lab.predict')}: score activations with a trained probe",
        "",
        "usage: python -m probe_lab.predict probe=PATH data=OPTION data.KEY=VALUE ... [allow_other_layer=true]",
        "",
        "  probe=PATH             a training run's folder, or its probe.safetensors (required)",
        "  The layer scored is the probe's own (probe.json); data.layer naming another one needs",
        "  allow_other_layer=true. Writes scores.csv and scores.npy, and metrics.json with labels.",
        "",
        "Data (data=option; * the one chosen):",
        *_group_lines(["data"], choices),
        "",
        "Settings (key=value):",
        *_setting_lines(cfg, choices, app_config="predict", skip=("probe_path", *NOT_READ_BY_PREDICT), optional=LABELS),
        "",
        "Hydra:",
        HYDRA_FLAGS,
    ]
    return "\n".join(lines if problem is None else [f"(overrides not applied: {problem})", *lines])


def extract_help(overrides: Sequence[str]) -> str:
    """`python -m probe_lab.extract [overrides] --help`."""
    cfg, _, problem = _composed("extract", overrides)
    comments = _nested_comments("extract")
    settings = []
    for key, value in _leaves(cfg):
        shown = _shown(value)
        settings.append(f"  {f'{key}={shown}':<38}{comments.get(key, '')}".rstrip())
    lines = [
        f"{version_line('probe_lab.extract')}: activations of a Hugging Face model over labelled texts, into a store",
        "",
        "usage: python -m probe_lab.extract model.path=M dataset.path=D.csv output=STORE [layers=[...]] [pooling=last]",
        "",
        "  Layer k is hidden_states[k] (0: the embeddings, -1: the last). Nothing is downloaded: model.path is a",
        "  folder or a hub name in the local cache. Run the same command again to resume an interrupted one.",
        "",
        "Settings (key=value):",
        *settings,
        "",
        "Then: python -m probe_lab data=store data.path=STORE [data.layer=I]  (I: the I-th extracted layer)",
        "",
        "Hydra:",
        HYDRA_FLAGS,
    ]
    return "\n".join(lines if problem is None else [f"(overrides not applied: {problem})", *lines])


def _leaves(cfg: DictConfig, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every setting but Hydra's own, missing ones as ???."""
    for key in cfg:
        name = f"{prefix}{key}"
        if name == "hydra":
            continue
        if OmegaConf.is_missing(cfg, key):
            yield name, "???"
        elif isinstance(cfg[key], DictConfig):
            yield from _leaves(cfg[key], f"{name}.")
        else:
            yield name, cfg[key]


def _nested_comments(option: str) -> dict[str, str]:
    """{dotted key: trailing comment} of an app config whose sections nest one level (`model:` then
    indented keys)."""
    found, section = {}, ""
    for line in _yaml_text("", option).splitlines():
        indented = line.startswith(" ")
        match = re.match(r"^\s*([A-Za-z_][\w-]*):\s*(.*?)\s*(?:#\s?(.*))?$", line)
        if not match or line.lstrip().startswith("#"):
            continue
        key, value, comment = match.groups()
        if not indented:
            section = key if not value else ""
        name = f"{section}.{key}" if indented and section else key
        if comment:
            found[name] = comment.strip()
    return found


def _composed(config_name: str, overrides: Sequence[str]) -> tuple[DictConfig, dict[str, Any], str | None]:
    """The config composed with the overrides (without them if they do not compose, with the reason),
    and each group's chosen option."""
    problem = None
    register_configs()  # the apps' schemas, which their config files name first
    with initialize_config_module(CONFIG_MODULE, version_base=None):
        try:
            cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
        except (HydraException, OmegaConfBaseException) as err:
            problem = str(err).strip().splitlines()[0]
            cfg = compose(config_name, return_hydra_config=True)
    choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
    assert isinstance(choices, dict)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, choices, problem


def _group_lines(groups: Sequence[str], choices: dict[str, Any]) -> Iterator[str]:
    for group in groups:
        options = _options(group)
        chosen = choices.get(group)
        for index, option in enumerate(options):
            mark = "*" if option == chosen else " "
            label = group if index == 0 else ""
            yield f"  {label:<15}{mark}{option:<22}{_description(group, option)}"


def _options(group: str) -> list[str]:
    folder = resources.files(CONFIG_MODULE).joinpath(group)
    names = [entry.name.removesuffix(".yaml") for entry in folder.iterdir() if entry.name.endswith(".yaml")]
    return sorted(names, key=lambda name: (name not in ("auto", "default"), name))


def _yaml_text(group: str, option: str) -> str:
    path = resources.files(CONFIG_MODULE).joinpath(f"{group}/{option}.yaml" if group else f"{option}.yaml")
    return path.read_text() if path.is_file() else ""


def _description(group: str, option: str) -> str:
    """An option file's leading comment, to its first sentence (one line)."""
    comment = []
    for line in _yaml_text(group, option).splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if not text.startswith("@package"):
            comment.append(text)
    text = " ".join(comment)
    sentence = re.split(r"(?<=[.;])\s", text, maxsplit=1)[0].rstrip(".;")
    return sentence if len(sentence) <= 100 else sentence[:99] + "…"


def _key_comments(group: str, option: str) -> dict[str, str]:
    """{top-level key: its trailing comment} of an option file; a required key's (`key: ???`) comment
    starts with "(required)"."""
    found = {}
    for line in _yaml_text(group, option).splitlines():
        match = _TRAILING_COMMENT.match(line)
        if match:
            found[match.group(1)] = match.group(2).strip()
        required = _REQUIRED.match(line)
        if required:
            found[required.group(1)] = f"(required) {found.get(required.group(1), '')}".strip()
    return found


def _setting_lines(
    cfg: DictConfig,
    choices: dict[str, Any],
    *,
    app_config: str,
    skip: Sequence[str] = ("data.source",),
    optional: Sequence[str] = (),
) -> Iterator[str]:
    """One line per setting: `key=value` and its description, from the app's config file (`app_config`)
    for top-level keys and from each group's chosen option file for the rest; `optional` keys drop
    the option file's "(required)"."""
    top_comments = _key_comments("", app_config)
    for key in cfg:
        name = str(key)
        if name in skip:
            continue
        node = cfg[name]
        if not isinstance(node, DictConfig):
            yield _setting_line(name, cfg, name, top_comments.get(name) or _field_help(cfg, name))
            continue
        chosen = choices.get(name)
        if name in OPEN_GROUPS:
            yield from _open_group_lines(name, node, chosen)
            continue
        comments = _key_comments(name, chosen) if isinstance(chosen, str) else {}
        for child in node:
            child_name = str(child)
            if (name in NAMED_BY_OPTION and child_name == "name") or f"{name}.{child_name}" in skip:
                continue
            help_text = comments.get(child_name) or _field_help(node, child_name)
            if f"{name}.{child_name}" in optional:
                help_text = help_text.removeprefix("(required)").strip()
            yield _setting_line(f"{name}.{child_name}", node, child_name, help_text)


def _open_group_lines(group: str, node: DictConfig, chosen: Any) -> Iterator[str]:
    if group == "trainer":
        target = node.get("_target_", "lightning.pytorch.Trainer")
        yield f"  {'trainer.<flag>':<38}any flag of {target} (pytorch backend; see the trainer group)"
        return
    entries = [str(name) for name in node if isinstance(node[name], DictConfig)]
    if not entries:
        yield f"  {group + ':':<38}none"
    for entry in entries:
        yield f"  {f'{group}.{entry}':<38}{node[entry].get('_target_', '')}"


def _setting_line(name: str, node: DictConfig, key: str, help_text: str) -> str:
    missing = OmegaConf.is_missing(node, key) or help_text.startswith("(required)")
    value = "???" if missing else _shown(node[key])
    return f"  {f'{name}={value}':<38}{help_text}".rstrip()


def _shown(value: Any) -> str:
    """A setting's value as it is written on the command line (a list as [a,b])."""
    if isinstance(value, ListConfig):
        return f"[{','.join(map(str, value))}]"
    return OmegaConf.to_yaml(OmegaConf.create({"v": value})).removeprefix("v: ").strip()


def _field_help(node: DictConfig, key: str) -> str:
    schema = OmegaConf.get_type(node)
    if not dataclasses.is_dataclass(schema):
        return ""
    for field in dataclasses.fields(schema):
        if field.name == key:
            return field.metadata.get("help", "")
    return ""
