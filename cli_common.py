"""What the commands of ``cli.py`` share: the common options, progress bars, the default text
encoder's note, the mapping between options and config fields, and how the library's typed errors
are worded for the command line (``describe_error``).

The library never names an option: its errors carry fields (``rerun``, ``setting``, ``hint``, see
``pipeline.errors``) and the option that sets a config field is read here from the commands' own
parameters, so renaming an option touches only ``cli.py``.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from pipeline import runtime
from pipeline.errors import MnerError
from trainer.config import field_groups

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def data_dir_option(f):
    return click.option("--data-dir", type=click.Path(path_type=Path), default=Path("data"),
                        show_default=True,
                        help="Folder with train.txt, valid.txt and test.txt (UMT format).")(f)


def image_dir_option(f):
    return click.option("--image-dir", type=click.Path(path_type=Path), default=None,
                        help="Folder of <IMGID>.jpg images "
                             "[default: <data-dir>/images if present].")(f)


def captions_option(f):
    return click.option("--captions", type=click.Path(path_type=Path), default=None,
                        help="Captions file '<id>.jpg :<caption>' "
                             "[default: the one file in <data-dir>/image_captions/].")(f)


def artifacts_option(f):
    return click.option("--artifacts", type=click.Path(path_type=Path), default=Path("artifacts"),
                        show_default=True, help="Output root for features, graphs and runs.")(f)


def device_option(f):
    return click.option("--device", default="auto", show_default=True,
                        help="cpu, cuda, cuda:N, or auto (cuda when available).")(f)


def quiet_option(f):
    return click.option("--quiet", is_flag=True, help="No progress bars.")(f)


def progress_factory(quiet: bool):
    """tqdm bars on stderr, or silent ones under --quiet."""
    from pipeline.progress import no_progress
    if quiet:
        return no_progress
    from tqdm import tqdm
    return functools.partial(tqdm, file=sys.stderr, dynamic_ncols=True, mininterval=0.5)


def default_text_encoder(device: str, option: str = "--encoder") -> tuple[str, str]:
    """The default text encoder for ``device`` (``pipeline.runtime``) and the line that says so,
    naming the ``option`` of the running command that chooses another."""
    name, gpu = runtime.default_text_encoder(device), runtime.uses_gpu(device)
    return name, (f"text encoder: {name} (default {'with' if gpu else 'without'} a GPU; "
                  f"{option} chooses another)")


def option_of(command: click.Command | None, setting: str | None):
    """The option of ``command`` that sets the config field ``setting`` (``model.k`` or ``k``):
    the one named like the field, or ``--no-<field>`` for a switch that turns it off; else None.
    Read from the command's own parameters: renaming an option needs no table."""
    if command is None or not setting:
        return None
    field = setting.rsplit(".", 1)[-1]
    for param in command.params:
        if isinstance(param, click.Option) and param.name in (field, f"no_{field}"):
            return param
    return None


def _named(param: click.Option) -> str:
    return max(param.opts, key=len)     # --output rather than -o


def _fixes(err: MnerError, command, group) -> list[str]:
    """The ways out of ``err``, worded for the command line (see ``describe_error``)."""
    option = option_of(command, err.setting)
    rerun = group.commands.get(err.rerun) if err.rerun and group else None
    there = None if option else option_of(rerun, err.setting)   # the option of the rerun stage
    fixes = []
    if err.hint:
        fixes.append(f"{err.hint} ({_named(option)})" if option else err.hint)
    if err.rerun and not (option and command is rerun):
        given = "" if there is None else f" {_named(there)}" + ("" if there.is_flag else " <value>")
        fixes.append(f"re-run `python cli.py {err.rerun}{given} ...`")
    if option and not err.hint:
        fixes.append(f"{'pass' if option.is_flag else 'set'} {_named(option)}")
    elif err.setting and option is None and there is None:
        where = " in a --config file" if option_of(command, "config_file") else ""
        fixes.append(f"set {err.setting}{where}")
    return fixes


def describe_error(err: MnerError, command: click.Command | None = None,
                   group: click.Group | None = None) -> str:
    """One line for ``err``: where (``path:line: ``), the problem, then the fixes worded from its
    fields for ``command`` (the running one by default): ``hint`` as is (with the option that
    sets ``setting`` in brackets), ``rerun`` as "re-run `python cli.py <stage> ...`", ``setting``
    as "set --option" / "pass --flag" (or "set <field>" when no option sets it). An error with
    no fix fields reads as ``str(err)``. Options are looked up on the running command only (an
    option of another command is never suggested), then on the ``rerun`` command."""
    ctx = click.get_current_context(silent=True)
    group = group or (ctx.find_root().command if ctx is not None else None)
    if command is None:
        command = ctx.command if ctx is not None and ctx.command is not group else (
            group.commands.get(err.stage or "") if group else None)
    text = f"{err.where}: {err.problem}" if err.where else err.problem
    fixes = _fixes(err, command, group)
    if len(fixes) > 1 and fixes[-1].startswith(("set ", "pass ")) and err.rerun:
        fixes[-2:] = [" or ".join(fixes[-2:])]
    return "; ".join([text, *fixes]).replace("\n", " ")     # one line, whatever the library said


def friendly_errors(f):
    """Turn the library's ``MnerError`` into a one-line ``Error: ...`` (exit 1) unless --debug."""
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except MnerError as err:
            if click.get_current_context().find_root().params.get("debug"):
                raise
            raise click.ClickException(describe_error(err)) from None
    return wrapper


def config_values(options: dict) -> dict:
    """Options given to ``train`` as ``TrainConfig`` settings (``TrainConfig.with_overrides``):
    an option named like a setting sets it; ``--no-<setting>`` switches that setting off. Read
    from the dataclasses (``trainer.config.field_groups``): no table to keep in step."""
    settings, values = field_groups(), {}
    for name, value in options.items():
        if name in settings:
            values[name] = value
        elif name.startswith("no_") and name[3:] in settings:
            if value:
                values[name[3:]] = False
        else:
            raise click.UsageError(f"option {name!r} sets no TrainConfig field")
    return values

# The options of `train` (each sets the TrainConfig field of its name, see config_values), in the
# order --help lists them; `train_options` applies them to the command.
TRAIN_OPTIONS = [
    click.option("--k", type=int, default=None, help="Neighbours per relation [default: 5]."),
    click.option("--epochs", default=None, type=int, help="Training epochs [default: 15]."),
    click.option("--seeds", default="1", show_default=True,
                 help="Comma-separated seeds, e.g. 1,2,3."),
    click.option("--encoder", default=None, help="Text encoder: registered name, local folder or "
                 "hf:<id> [default: mpnet-base on a GPU when its wheels are installed, else "
                 "minilm-l6]."),
    click.option("--text-only", is_flag=True, help="No image information at all."),
    click.option("--no-inter", is_flag=True, help="Without the inter-modal relation graph."),
    click.option("--no-intra", is_flag=True, help="Without the intra-modal relation graph."),
    click.option("--no-gate", is_flag=True, help="Fuse image vectors by plain addition."),
    click.option("--no-shape", is_flag=True, help="Without the word-shape features."),
    click.option("--context", type=click.Choice(["none", "inter", "intra", "text"]), default=None,
                 help="Append the tweets paired with a graph's neighbours to the encoder input "
                      "(text: the build-graphs --relation text graph) [default: none]."),
    click.option("--context-labels", is_flag=True,
                 help="Mark the entity spans of the appended tweets that are train tweets "
                      "([PER Obama ] ...); valid and test neighbours give words only."),
    click.option("--context-k", type=int, default=None,
                 help="Neighbour tweets appended [default: 3]."),
    click.option("--graph-source", type=click.Choice(["ours", "rgcn"]), default=None,
                 help="Our graphs or the authors' imported lists [default: ours]."),
    click.option("--pool", type=click.Choice(["all", "train"]), default=None,
                 help="Pool the graphs must be built over [default: all]."),
    click.option("--intra-view", type=click.Choice(["object_types", "image_global"]), default=None,
                 help="Which intra graph (build-graphs --intra-view) the run reads, for the "
                      "relation and --context intra [default: object_types]."),
    click.option("--node-view", type=click.Choice(["auto", "region_grid", "image_global"]),
                 default=None, help="Node features [default: auto: region grids if extracted]."),
    click.option("--features", type=click.Path(path_type=Path), default=None,
                 help="Node feature file [default: from the extract manifest]."),
    click.option("--inter-graph", type=click.Path(path_type=Path), default=None,
                 help="Inter-modal graph file [default: from the build-graphs manifest]."),
    click.option("--intra-graph", type=click.Path(path_type=Path), default=None,
                 help="Intra-modal graph file [default: from the build-graphs manifest]."),
    click.option("--context-graph", type=click.Path(path_type=Path), default=None,
                 help="Graph file of --context [default: from the build-graphs manifest]."),
    click.option("--context-subwords", type=int, default=None,
                 help="Subword budget of the appended tweets [default: 96]."),
    click.option("--batch-size", type=int, default=None, help="[default: 16]"),
    click.option("--lr-encoder", type=float, default=None, help="[default: 1e-4]"),
    click.option("--lr-head", type=float, default=None, help="New layers' rate [default: 1e-3]."),
    click.option("--patience", type=int, default=None, help="Early-stopping epochs [default: 4]."),
    click.option("--length-buckets", type=int, default=None,
                 help="Batches of similar length, sorted in chunks of this many batches (less "
                      "padding; main.sh uses 50 on the CPU) [default: 0: random batches]."),
    click.option("--precision", type=click.Choice(["auto", "bf16", "fp32"]), default=None,
                 help="auto: bf16 autocast on CUDA, fp32 on CPU."),
    click.option("--deterministic", is_flag=True, help="torch deterministic algorithms."),
    click.option("--no-cuda-graphs", is_flag=True,
                 help="On CUDA, run each step eagerly instead of replaying it as a CUDA graph."),
    click.option("--slug", default=None,
                 help="Run folder suffix [default: <dataset>-<variant>-s<seed>]."),
    click.option("--no-checkpoint", is_flag=True,
                 help="Keep scores and predictions but no weights (no evaluate/predict later)."),
]


def train_options(f):
    for option in reversed(TRAIN_OPTIONS):
        f = option(f)
    return f
