"""The ``landscape`` command line: a thin click layer over the library.

Every command parses its options, calls the library, writes files and reports. A user error
(missing file, bad grid, unknown data set, incompatible surface file, failed download, a model
file that cannot be loaded, a module given to --import that fails, data that do not fit the
model) ends with exit code 2 and one sentence on stderr, without a traceback. Every number is
checked (range, finite) by its click type and every output's folder by a callback while the
options are parsed, so such an error comes before any model is loaded or anything is written.

The user's own model and data: ``--data FILE.npz`` uses the arrays as stored (only uint8 x is
scaled to [0, 1], or x divided by ``--scale``), and ``--import MODULE`` imports the module that
defines the model's custom classes, here and in every worker process.
"""

from __future__ import annotations

import logging
import math
import os
import pathlib
import re
import sys
import warnings

import click

from landscape import __version__, _checks

logger = logging.getLogger("landscape")


class UserError(click.ClickException):
    """One sentence, exit code 2."""

    exit_code = 2


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _one_sentence(err: Exception) -> str:
    """The line of an error message that says what went wrong."""
    lines = [_ANSI.sub("", line).strip() for line in str(err).strip().splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return repr(err)
    if _is_tf_input_error(err):
        # "Graph execution error:", the stack of the op, then the reason, then "[[{{node ...}}]]"
        reasons = [
            line for line in lines
            if not line.startswith(("[[", "File ", "Detected at node", "Graph execution error"))
            and not line.endswith(":")
        ]  # fmt: skip
        reason = (reasons or lines)[-1].split("[[")[0].strip()
        return f"The model cannot be evaluated on this data: {reason}"
    if lines[0].startswith("Exception encountered when calling") and len(lines) > 1:
        return f"{lines[0]} {lines[1]}"  # Keras puts the reason on the next line
    return lines[0]


def _is_tf_input_error(err: Exception) -> bool:
    """TensorFlow's InvalidArgumentError: data that does not fit the model (shapes, labels)."""
    cls = type(err)
    return cls.__name__ == "InvalidArgumentError" and cls.__module__.startswith("tensorflow")


class _Group(click.Group):
    """Turns the library's ValueErrors, file errors and TensorFlow's complaints about the data
    (InvalidArgumentError) into ``UserError``s."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.UsageError as err:  # a subcommand's options: one line, without the usage
            raise UserError(err.format_message()) from None
        except (ValueError, OSError) as err:
            raise UserError(_one_sentence(err)) from None
        except Exception as err:
            if _is_tf_input_error(err):
                raise UserError(_one_sentence(err)) from None
            raise


def _warn(message, category, filename, lineno, file=None, line=None) -> None:
    click.echo(f"Warning: {message}", err=True)


def _setup(quiet: bool, *, needs: str | None = "backend") -> int:
    """Logging and Keras verbosity for a command; returns the Keras ``verbose`` value.

    The backend check runs first, before the command imports the library: ``needs="backend"``
    (every command but plot) accepts Keras's TensorFlow, JAX or PyTorch backend
    (``KERAS_BACKEND``); None (plot) checks nothing. One sentence if the check fails;
    TensorFlow's start-up log lines are silenced when it is the backend.
    """
    # Before TensorFlow loads: TensorFlow's logger adds a handler of its own (and every warning
    # of it came twice) unless the root logger has one.
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")
    if needs is not None:
        try:
            if os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
                from landscape._startup import import_tensorflow_quietly

                import_tensorflow_quietly()  # no start-up banner (landscape._startup says why)
            from sam._backend import adapter
            from sam._compat import require_tensorflow

            # sam._backend's rule: KERAS_BACKEND, TensorFlow when unset (checked before Keras
            # loads, so that a missing TensorFlow is the install hint)
            if os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
                require_tensorflow(f"landscape {click.get_current_context().info_name}")
            else:
                adapter()
        except ImportError as err:
            raise UserError(str(err)) from None
    from landscape._provenance import invocation

    ctx = click.get_current_context()  # every output's provenance names the command's options
    ctx.with_resource(invocation(f"landscape {ctx.info_name}", ctx.params))
    warnings.showwarning = _warn  # one line, without the source line of the library
    logging.getLogger("distributed").setLevel(logging.ERROR)  # Dask's cluster chatter
    return 0 if quiet else 1


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        click.echo(text)


def _at_least(flag: str, value, minimum: int = 1) -> None:
    """A numeric option below ``minimum`` (None: not given) as one sentence naming the flag."""
    if value is not None and value < minimum:
        raise UserError(f"{flag} must be at least {minimum} (received {value}).")


class Int(click.IntRange):
    """``click.IntRange`` whose errors say "integer" (click's own says "integer range")."""

    name = "integer"


class Finite(click.FloatRange):
    """``click.FloatRange`` that also refuses NaN and ±inf (a NaN passes every comparison)."""

    name = "finite float"

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{rv} is not a finite number.", param, ctx)
        return rv


# The option types of the commands: every number is range-checked and finite at parsing,
# before a command does anything (click's message names the option, the rule and the value).
POSITIVE = Finite(min=0, min_open=True)
NONNEGATIVE = Finite(min=0)
OPEN_UNIT = Finite(0, 1, min_open=True, max_open=True)  # a relative tolerance
UNIT = Finite(0, 1)
COUNT = Int(min=1)
SIZE = Int(min=0)  # a number of samples, 0 for all
SEED = Int(0, 2**32 - 1)  # NumPy's and Keras's seeds


def _resnet_depth(ctx, param, value):
    """A ResNet depth of the form 6n + 2 (the type already says it is at least 8)."""
    if value is not None and (value - 2) % 6:
        raise click.BadParameter(f"{value} is not of the form 6n + 2 (8, 14, 20, ...).", ctx, param)
    return value


def _output_path(ctx, param, value):
    """An output file (or folder) whose parent folder exists and is writable, checked before
    any work: the command would otherwise fail only when it writes, at the end."""
    if value is None:
        return value
    parent = os.path.dirname(os.path.abspath(os.fspath(value)))
    shown = os.path.dirname(os.fspath(value)) or "."
    if not os.path.isdir(parent):
        raise click.BadParameter(f"the folder {shown!r} does not exist.", ctx, param)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise click.BadParameter(f"the folder {shown!r} is not writable.", ctx, param)
    return value


def _output_folder(ctx, param, value):
    """An output folder that may be created: its nearest existing ancestor must be a
    writable folder."""
    if value is None:
        return value
    ancestor = os.path.abspath(os.fspath(value))
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if os.path.isdir(ancestor) and not os.access(ancestor, os.W_OK | os.X_OK):
        raise click.BadParameter(f"the folder {ancestor!r} is not writable.", ctx, param)
    return value


def _model_paths(*paths) -> None:
    """Each model path names a model file (not missing, not a SavedModel directory), checked
    before the first model is loaded."""
    for path in paths:
        if path:
            _checks.model_file(path)


def _grids(**specs) -> None:
    """Grid options (``min:max:num``) parsed before any work: finite, ordered, enough points."""
    from landscape.surface import parse_grid  # NumPy and h5py only

    for name, spec in specs.items():
        if spec is not None:
            parse_grid(spec, name=name)


def _data_source(ctx, param, value):
    """The --data name or file, checked while the options are parsed, before TensorFlow loads
    (the messages of ``read_dataset``)."""
    from landscape.data import check_data_name  # NumPy only

    try:
        return check_data_name(value)
    except ValueError as err:
        raise UserError(str(err)) from None


def _out(*args, **kwargs):
    """An option naming an output file: its folder is checked at parsing (``_output_path``)."""
    return click.option(*args, type=click.Path(dir_okay=False), callback=_output_path, **kwargs)


quiet_option = click.option("--quiet", "-q", is_flag=True, help="Only errors; no progress bars.")
data_option = click.option(
    "--data",
    default="embedded",
    callback=_data_source,
    show_default=True,
    help="'embedded', mnist, fashion_mnist, cifar10, cifar100 or an .npz file with x_train, "
    "y_train, x_test, y_test [and sample_weight_train, sample_weight_test], used as stored "
    "(uint8 x is scaled to [0, 1]; train applies the image convention).",
)
scale_option = click.option(
    "--scale",
    type=POSITIVE,
    default=None,
    help="Divide x of the --data .npz by this number, e.g. 255 for float images in [0, 255] "
    "[only uint8 x, by 255].",
)
regularization_option = click.option(
    "--regularization",
    is_flag=True,
    help="Add the model's weight penalties (kernel/bias regularizers) to the loss, as "
    "model.evaluate does [the data loss alone].",
)
precision_option = click.option(
    "--precision",
    type=click.Choice(_checks.options(_checks.Precision)),
    default="auto",
    show_default=True,
    help="Dtype the model computes in for the analysis: auto is float32 for a mixed-precision "
    "model, else the model's own; model keeps its own (float16 under mixed_float16: "
    "eigenvalue certificates then usually fail).",
)
import_option = click.option(
    "--import",
    "imports",
    multiple=True,
    metavar="MODULE",
    help="Import this module (a name importable from the current directory, or a .py file) "
    "before loading the model, for the model's custom classes; repeatable.",
)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="landscape")
def main() -> None:
    """Train with SAM and measure the loss landscape of Keras models.

    \b
    Examples:
      landscape train --optimizer sam --epochs 5 --out sam.keras
      landscape surface sam.keras --x=-1:1:21 --y=-1:1:21 --out sam.h5
      landscape plot sam.h5 --kind contour --log --out sam.png
      landscape sharpness sam.keras --json sam.json
      landscape figures --quick
    """


# -- train ---------------------------------------------------------------------------------------


@main.command()
@click.option("--model", "model_name", type=click.Choice(_checks.options(_checks.ModelName)),
              default="cnn", show_default=True, help="Architecture from the zoo.")  # fmt: skip
@click.option("--depth", type=Int(min=8), default=8, show_default=True,
              callback=_resnet_depth, help="ResNet depth (6n+2).")  # fmt: skip
@click.option("--width", type=COUNT, default=16, show_default=True, help="ResNet base width.")
@data_option
@scale_option
@click.option("--optimizer", type=click.Choice(_checks.options(_checks.OptimizerName)),
              default="sam", show_default=True)  # fmt: skip
@click.option("--rho", type=NONNEGATIVE, default=None, help="SAM radius [0.05; ASAM 0.5].")
@click.option("--lr", type=POSITIVE, default=0.01, show_default=True, help="Learning rate.")
@click.option("--momentum", type=UNIT, default=0.9, show_default=True)
@click.option("--weight-decay", type=NONNEGATIVE, default=None,
              help="Decoupled weight decay of SGD.")  # fmt: skip
@click.option("--epochs", type=COUNT, default=3, show_default=True)
@click.option("--batch-size", type=COUNT, default=128, show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--samples", type=SIZE, default=0, help="Train on the first N samples [all].")
@click.option("--augment", is_flag=True, help="Random flips and shifts of the training images.")
@click.option("--save-every", type=SIZE, default=0,
              help="Save weights every N epochs (and at start) for trajectory plots.")  # fmt: skip
@_out("--out", default="model.keras", show_default=True)
@click.option("--strategy", type=click.Choice(_checks.options(_checks.StrategyName)),
              default="default", show_default=True,
              help="default: one device; mirrored: all local GPUs (else CPUs); multi-worker: "
                   "the cluster in TF_CONFIG. --batch-size is the global batch.")  # fmt: skip
@click.option("--sync-perturbations", is_flag=True,
              help="SAM/ASAM under mirrored or multi-worker: every replica uses the "
                   "all-reduced perturbation (single-device SAM on the global batch), not its "
                   "own.")  # fmt: skip
@click.option("--alpha", type=NONNEGATIVE, default=None,
              help="gsam/looksam α [gsam 0.1; looksam 0.7].")  # fmt: skip
@click.option("--looksam-k", type=COUNT, default=None,
              help="looksam: a SAM step every K [5].")  # fmt: skip
@click.option("--sigma", type=NONNEGATIVE, default=None, help="friendlysam σ [1].")
@click.option("--lmbda", type=Finite(0, 1, max_open=True), default=None,
              help="friendlysam λ (moving average) [0.9].")  # fmt: skip
@click.option("--beta", type=Finite(0, 1, min_open=True), default=None,
              help="esam β: weight perturbation rate [0.6].")  # fmt: skip
@click.option("--gamma", type=Finite(0, 1, min_open=True), default=None,
              help="esam γ: data selection ratio [0.5].")  # fmt: skip
@click.option("--perturbed", default=None, metavar="REGEX",
              help="SAM members: perturb only these variables, 'normalization' (SAM-ON) or a "
                   "regular expression on variable.path [all].")  # fmt: skip
@click.option("--sam-every", type=COUNT, default=None, help="SAM members: SAM every K "
              "steps, plain steps in between.")  # fmt: skip
@click.option("--sam-last", type=Finite(0, 1, min_open=True), default=None, help="SAM members: "
              "SAM only in this last fraction of the steps.")  # fmt: skip
@click.option("--sam-probability", type=UNIT, default=None, help="SAM members: SAM with "
              "this probability per step (seeded by --seed).")  # fmt: skip
@click.option("--track-sharpness", "track_every", type=SIZE, default=0, metavar="EVERY",
              help="Record λ_max and the stability threshold every EVERY epochs (or steps, "
                   "--track-unit) on a probe set: OUT_sharpness.json and .png [off].")  # fmt: skip
@click.option("--track-unit", type=click.Choice(["epoch", "step"]), default="epoch",
              show_default=True, help="Unit of --track-sharpness.")  # fmt: skip
@click.option("--track-samples", type=COUNT, default=1000, show_default=True,
              help="Probe set of --track-sharpness: the first N training examples.")  # fmt: skip
@quiet_option
def train(model_name, depth, width, data, scale, optimizer, rho, lr, momentum, weight_decay, epochs,
          batch_size, seed, samples, augment, save_every, out, strategy, sync_perturbations,
          alpha, looksam_k, sigma, lmbda, beta, gamma, perturbed, sam_every, sam_last,
          sam_probability, track_every, track_unit, track_samples, quiet):  # fmt: skip
    """Train a model with SGD, SAM, ASAM or a SAM-family member and save it as a .keras file.

    The family (docs/guide/sam-family.md): gsam (--alpha), looksam (--looksam-k, --alpha),
    friendlysam (--sigma, --lmbda), esam (--beta, --gamma); for every SAM member --perturbed
    normalization is SAM-ON, and --sam-every / --sam-last / --sam-probability make plain steps
    between SAM steps. An option that does not apply to --optimizer is refused.

    Cost at the defaults: 3 epochs of SAM (two gradients per step) over the 6,000 embedded
    images, about 20 s on 2 cores (docs/guide/defaults.md).

    With --strategy multi-worker, start the same command on every worker, each with TF_CONFIG
    naming the cluster and its own task index; worker 0 (or the "chief" task) writes --out and
    the checkpoints, every worker reads --data itself.

    \b
    Examples:
      landscape train --optimizer sgd --out sgd.keras
      landscape train --model resnet --data cifar10 --optimizer sam --rho 0.05 --epochs 20
      landscape train --optimizer sam --save-every 1 --out runs/sam.keras
      landscape train --optimizer looksam --looksam-k 5 --alpha 0.7 --out looksam.keras
      landscape train --optimizer sam --sam-every 2 --perturbed normalization
      landscape train --strategy mirrored --sync-perturbations --batch-size 256
      landscape train --optimizer sgd --momentum 0 --lr 0.1 --track-sharpness 1 --out gd.keras

    \b
    Two workers (on host2 the same command with "index": 1):
      TF_CONFIG='{"cluster": {"worker": ["host1:2222", "host2:2222"]},
                  "task": {"type": "worker", "index": 0}}' \\
        landscape train --strategy multi-worker --batch-size 256 --out sam.keras
    """
    if not str(out).endswith(".keras"):
        raise UserError(f"--out must end in .keras. Received: {out}.")
    _check_tracking(track_every, track_samples, strategy)
    verbose = _setup(quiet)
    from landscape.data import read_dataset
    from landscape.train import CheckpointEvery
    from landscape.train import train as train_model

    # The zoo's models are image classifiers: images with a channel axis, integer labels.
    loaded = read_dataset(data, scale=scale, images=True)
    for note in loaded.notes:
        if note.startswith("sample weights"):
            note = f"{note}: not used by train (surface, hessian and sharpness use them)"
        _say(quiet, note)
    (x, y), test = loaded.train[:2], loaded.test[:2]
    dataset = ((x[:samples], y[:samples]) if samples else (x, y)), test
    model_kwargs = {"depth": depth, "width": width} if model_name == "resnet" else {}
    callbacks = []
    checkpoint_dir = None
    if save_every:
        checkpoint_dir = pathlib.Path(out).with_suffix("").as_posix() + "_checkpoints"
        callbacks.append(CheckpointEvery(checkpoint_dir, every=save_every))
    tracker = _tracker(dataset[0], track_every, track_unit, track_samples)
    callbacks = [tracker, *callbacks] if tracker else callbacks
    result = train_model(
        dataset, model=model_name, optimizer=optimizer, epochs=epochs, batch_size=batch_size,
        learning_rate=lr, momentum=momentum, weight_decay=weight_decay, rho=rho, seed=seed,
        model_kwargs=model_kwargs, callbacks=callbacks, augment=augment,
        verbose=2 if verbose else 0, strategy=strategy, sync_perturbations=sync_perturbations,
        optimizer_options={
            "alpha": alpha, "k": looksam_k, "sigma": sigma, "lmbda": lmbda, "beta": beta,
            "gamma": gamma, "perturbed": perturbed, "sam_every": sam_every, "sam_last": sam_last,
            "sam_probability": sam_probability,
        },
    )  # fmt: skip
    if result.save(out):
        where = f" (checkpoints in {checkpoint_dir})" if checkpoint_dir else ""
        _say(quiet, f"saved {out}{where}")
        if _needs_sam(result.model):
            _say(quiet, f"{out} holds classes of the sam package: `import sam` before "
                        "keras.models.load_model (docs/guide/loading-models.md).")  # fmt: skip
        if tracker is not None:
            _save_tracking(tracker, out, quiet)
    else:
        _say(quiet, f"trained; the chief worker saves {out}")
    click.echo(
        f"train loss {result.train_loss:.4f}  train acc {result.train_acc:.4f}  "
        f"test loss {result.test_loss:.4f}  test acc {result.test_acc:.4f}"
    )


def _needs_sam(model) -> bool:
    """Whether the saved model or its optimizer is a class of the ``sam`` package (SAMModel,
    SAM and its family), which ``keras.models.load_model`` finds only once ``sam`` is imported."""
    return any(type(obj).__module__.split(".")[0] == "sam" for obj in (model, model.optimizer))


def _check_tracking(every: int, samples: int, strategy) -> None:
    """A strategy the tracker runs under (the types of the options check their ranges)."""
    if every and strategy not in (None, "default"):
        raise UserError(
            f"--track-sharpness runs with the default strategy only. Received: --strategy "
            f"{strategy}."
        )


def _tracker(train, every: int, unit: str, samples: int):
    """A SharpnessTracker on the first ``samples`` training examples, or None (``every`` 0)."""
    if not every:
        return None
    from landscape.tracking import SharpnessTracker

    return SharpnessTracker((train[0][:samples], train[1][:samples]), every=every, unit=unit)


def _save_tracking(tracker, out, quiet: bool) -> None:
    """OUT_sharpness.json (the tracker's as_dict) and OUT_sharpness.png (plot_sharpness)."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    from landscape.plot import plot_sharpness

    stem = pathlib.Path(out).with_suffix("").as_posix() + "_sharpness"
    with open(stem + ".json", "w") as f:
        json.dump(tracker.as_dict(), f, indent=1)
    ax = plot_sharpness(tracker)
    ax.figure.savefig(stem + ".png", dpi=150, bbox_inches="tight")
    h = tracker.history
    last = ""
    if h["step"]:
        last = f"last λ_max {h['lambda_max'][-1]:.4g} vs threshold {h['threshold'][-1]:.4g}; "
    overhead = f"overhead {100 * tracker.overhead:.0f} % of training time"
    _say(quiet, f"sharpness: {len(h['step'])} probes, {last}{overhead} -> {stem}.json, .png")


# -- surface -------------------------------------------------------------------------------------


def _load_model(path, imports=()):
    from landscape.executors import load_model

    return load_model(path, imports=imports)


def _recipe(model_path, data, samples, test_samples, batch_size, scale, imports, regularization):
    """The ``ObjectiveRecipe`` of the command's options (test_samples None = all)."""
    from landscape.executors import ObjectiveRecipe

    return ObjectiveRecipe(
        model_path, data=data, samples=samples, test_samples=test_samples,
        batch_size=batch_size, scale=scale, imports=tuple(imports),
        regularization=regularization,
    )  # fmt: skip


@main.command()
@click.argument("model_path", metavar="MODEL.keras")
@click.option("--model2", type=str, default=None,
              help="Direction 1 interpolates MODEL -> MODEL2 (a=0 is MODEL).")  # fmt: skip
@click.option("--plane", type=str, nargs=2, default=None, metavar="M1 M2",
              help="The plane through MODEL (at 0,0), M1 (at 1,0) and M2; the models' "
                   "coordinates are printed [grid: the 3 models, margin 0.25].")  # fmt: skip
@click.option("--directions", "direction_kind", type=click.Choice(["random", "eigen"]),
              default="random", show_default=True,
              help="eigen: unit Hessian eigenvectors of the loss (--eigen-pair).")  # fmt: skip
@click.option("--eigen-pair", type=click.Choice(["top2", "top-bottom"]), default="top2",
              show_default=True,
              help="--directions eigen: the two largest eigenvalues', or the largest and the "
                   "most negative one's (a 1D surface uses the first).")  # fmt: skip
@click.option("--x", "x_spec", default=None, help="Grid of direction 1, min:max:num [-1:1:21].")
@click.option("--y", "y_spec", default=None, help="Grid of direction 2 (makes a 2D surface).")
@click.option("--norm", type=click.Choice(_checks.options(_checks.Norm)), default="filter",
              show_default=True)  # fmt: skip
@click.option("--ignore", type=click.Choice(_checks.options(_checks.Ignore)), default="biasbn",
              show_default=True)  # fmt: skip
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="Seed of random directions.")  # fmt: skip
@data_option
@scale_option
@import_option
@regularization_option
@click.option("--samples", type=SIZE, default=0,
              help="Use the first N training samples [all].")  # fmt: skip
@click.option("--test-samples", type=Int(min=-1), default=-1,
              help="Use the first N test samples; 0 skips the test set [all].")  # fmt: skip
@click.option("--batch-size", type=COUNT, default=256, show_default=True,
              help="Examples per batch of every grid point's evaluation (memory and speed, "
                   "not the values).")  # fmt: skip
@_out("--out", default="surface.h5", show_default=True)
@click.option("--workers", type=COUNT, default=None,
              help="Evaluate on N local worker processes (a process pool; --backend dask "
                   "starts a Dask LocalCluster) [in-process].")  # fmt: skip
@click.option("--scheduler", default=None,
              help="Address of a running Dask scheduler, e.g. tcp://host:8786.")  # fmt: skip
@click.option("--backend", type=click.Choice(_checks.options(_checks.Backend)), default="auto",
              show_default=True, help="Executor of --workers/--scheduler.")  # fmt: skip
@precision_option
@quiet_option
def surface(model_path, model2, plane, direction_kind, eigen_pair, x_spec, y_spec, norm, ignore,
            seed, data, scale, imports, regularization, samples, test_samples, batch_size, out,
            workers, scheduler, backend, precision, quiet):  # fmt: skip
    """Compute a 1D or 2D loss surface into an HDF5 file (resumes an existing one).

    With --workers or --scheduler, chunks of grid points are evaluated by worker processes
    (which must see MODEL and the data under the same paths); only this process writes --out.

    Cost at the defaults: 21 points on one random direction, each one pass over the training
    and test data (7,000 embedded examples), about 20 s on 2 cores for the CNN of `landscape
    train`; a 2D grid costs its points (--y=-1:1:21: 441).

    \b
    Examples:
      landscape surface sam.keras --x=-1:1:51 --y=-1:1:51 --out sam.h5
      landscape surface sgd.keras --model2 sam.keras --x=-0.5:1.5:41 --out sgd_to_sam.h5
      landscape surface sam.keras --x=-1:1:51 --y=-1:1:51 --workers 2 --out sam.h5
      landscape surface sam.keras --x=-1:1:101 --y=-1:1:101 --scheduler tcp://head:8786
      landscape surface mine.keras --import my_models.py --data mine.npz --x=-1:1:21
      landscape surface m0.keras --plane m1.keras m2.keras --out plane.h5
      landscape surface sam.keras --directions eigen --x=-0.5:0.5:21 --y=-0.5:0.5:21
    """
    if sum([bool(model2), bool(plane), direction_kind != "random"]) > 1:
        raise UserError("--model2, --plane and --directions eigen each choose the directions; "
                        "give one of them.")  # fmt: skip
    if precision != "auto" and (workers is not None or scheduler is not None or backend == "mpi"):
        raise UserError(
            f"--precision {precision} applies in this process only: worker processes rebuild "
            "the objective with --precision auto; drop --workers/--scheduler or the option."
        )
    _grids(x=x_spec, y=y_spec)
    _model_paths(model_path, model2, *(plane or ()))
    verbose = _setup(quiet)
    from landscape.executors import make_executor
    from landscape.surface import compute_surface

    if backend == "mpi" and scheduler is None and workers is None:
        workers = os.cpu_count() or 1
    model = _load_model(model_path, imports)
    test_samples = None if test_samples < 0 else test_samples
    recipe = _recipe(
        model_path, data, samples, test_samples, batch_size, scale, imports, regularization
    )
    objective = recipe.build(model, on_note=lambda note: _say(quiet, note))
    if precision != "auto":
        objective = objective.with_precision(precision)
    if plane:
        directions, x_spec, y_spec = _plane_directions(model, plane, imports, x_spec, y_spec, quiet)
    elif direction_kind == "eigen":
        from landscape.planes import eigenvector_directions

        directions = list(eigenvector_directions(objective, eigen_pair, seed=seed))
        directions, x_spec = directions[: 2 if y_spec else 1], x_spec or "-1:1:21"
        for d in directions:
            _say(quiet, f"eigenvector: eigenvalue {d.metadata['eigenvalue']:.6g}, residual "
                        f"{d.metadata['residual']:.2e}")  # fmt: skip
    else:
        directions, x_spec = _model_directions(model, model2, imports, x_spec, y_spec, norm,
                                               ignore, seed)  # fmt: skip
    with make_executor(workers, scheduler, backend) as executor:
        surf = compute_surface(
            objective,
            directions,
            recipe=None if executor is None else recipe,
            x=x_spec,
            y=y_spec,
            path=out,
            verbose=verbose,
            executor=executor,
        )
    _say(quiet, f"wrote {out}: {surf.ndim}D surface of shape {surf.shape}")
    for name, values in surf.values.items():
        click.echo(f"{name}: min {float(values.min()):.4f}  max {float(values.max()):.4f}")


def _plane_directions(model, plane, imports, x_spec, y_spec, quiet):
    """``--plane M1 M2``: the directions and grid of the plane through the three models."""
    from landscape.planes import plane_through

    p = plane_through(model, _load_model(plane[0], imports), _load_model(plane[1], imports))
    x_default, y_default = p.grid(margin=0.25, num=21)
    where = ", ".join(f"({a:.4g}, {b:.4g})" for a, b in p.coordinates)
    _say(quiet, f"plane: MODEL, M1, M2 at {where}")
    return list(p.directions), x_spec or x_default, y_spec or y_default


def _model_directions(model, model2, imports, x_spec, y_spec, norm, ignore, seed):
    """Random directions, or the interpolation to --model2 (and a random second one)."""
    from landscape.directions import interpolation_direction, random_direction

    if model2:
        first = interpolation_direction(model, _load_model(model2, imports))
        x_spec = x_spec or "-0.5:1.5:41"
    else:
        first = random_direction(model, norm=norm, ignore=ignore, seed=seed)
        x_spec = x_spec or "-1:1:21"
    directions = [first]
    if y_spec:
        directions.append(
            random_direction(model, norm=norm, ignore=ignore, seed=seed + 1, orthogonal_to=None)
        )
    return directions, x_spec


# -- plot ----------------------------------------------------------------------------------------


@main.command()
@click.argument("surface_path", metavar="SURF.h5")
@click.option("--kind", type=click.Choice(_checks.options(_checks.Kind)),
              default=None, help="Plot kind [contour for 2D, line for 1D].")  # fmt: skip
@click.option("--metric", default="train_loss", show_default=True)
@click.option("--log", is_flag=True, help="Logarithmic colour scale / y axis.")
@click.option("--levels", type=COUNT, default=None, help="Number of contour levels [15].")
@click.option("--vmin", type=Finite(), default=None)
@click.option("--vmax", type=Finite(), default=None)
@_out("--out", default=None,
      help="Image file (.png, .pdf, .svg) [SURF with .png; none with --vtk].")  # fmt: skip
@_out("--vtk", "vtk_path", default=None,
              help="Also (or, without --out, only) write the surface for ParaView, .vtk or "
                   ".vtu: z = --metric (log10 with --log), every metric as point data; "
                   "NaN points are holes.")  # fmt: skip
@quiet_option
def plot(surface_path, kind, metric, log, levels, vmin, vmax, out, vtk_path, quiet):
    """Draw a surface file (ours or loss-landscape's) to an image.

    Cost: about a second; no model and no TensorFlow are loaded.

    \b
    Examples:
      landscape plot sam.h5 --kind contour --log --out sam.png
      landscape plot sgd_to_sam.h5 --out interpolation.pdf
      landscape plot sam.h5 --vtk sam.vtk
    """
    if vmin is not None and vmax is not None and not vmin < vmax:
        raise UserError(f"--vmin must be less than --vmax (received {vmin} and {vmax}).")
    _setup(quiet, needs=None)  # a surface file is read and drawn without a backend
    if not os.path.isfile(surface_path):
        raise UserError(f"Surface file {surface_path!r} does not exist.")
    import matplotlib

    matplotlib.use("Agg")
    from landscape.plot import plot_surface
    from landscape.surface import Surface

    surf = Surface.load(surface_path)
    if vtk_path:
        from landscape.io import export_vtk

        export_vtk(surf, vtk_path, metric=metric, log=log)
        _say(quiet, f"wrote {vtk_path}")
        if out is None:
            return
    kind = kind or ("line" if surf.ndim == 1 else "contour")
    out = out or str(pathlib.Path(surface_path).with_suffix(".png"))
    ax = plot_surface(surf, metric=metric, kind=kind, log=log, levels=levels, vmin=vmin, vmax=vmax)
    ax.figure.savefig(out, dpi=150, bbox_inches="tight")
    _say(quiet, f"wrote {out}")


# -- hessian and sharpness ----------------------------------------------------------------------

analysis_data = [
    data_option,
    scale_option,
    import_option,
    regularization_option,
    precision_option,
    click.option(
        "--samples",
        type=SIZE,
        default=1000,
        show_default=True,
        help="Use the first N training samples (0: all); every product's cost is "
        "proportional to N.",
    ),  # fmt: skip
    click.option(
        "--batch-size",
        type=COUNT,
        default=500,
        show_default=True,
        help="Examples per batch of every loss, gradient and Hessian-vector "
        "product (memory and speed, not the values).",
    ),  # fmt: skip
    click.option("--seed", type=SEED, default=0, show_default=True),
]

# The cost knobs of hessian_eigenvalues (thick-restart Lanczos), shared by hessian and sharpness.
eigen_options = [
    click.option("--tol", type=OPEN_UNIT, default=1e-4, show_default=True,
                 help="Eigenvalues: relative residual |Hv - lv| / |l| that certifies them."),
    click.option("--max-iter", type=COUNT, default=None,
                 help="Eigenvalues: cap on the Hessian-vector products of the Lanczos run; "
                      "a run that reaches it says so (not converged) [1000]."),
    click.option("--basis-size", type=Int(min=3), default=None,
                 help="Eigenvalues: Lanczos basis, at least k + 2; memory is "
                      "(basis size + k + 5) x parameters x 8 bytes [max(2k + 10, 20)]."),
]  # fmt: skip


# The cost knobs of hessian_trace (Hutchinson), shared by hessian and sharpness; the defaults
# are the library's (landscape.hessian.TRACE_SAMPLES and TRACE_TOL, docs/guide/defaults.md).
trace_options = [
    click.option("--trace-probes", type=COUNT, default=100, show_default=True,
                 help="Trace: cap on the Hutchinson probes (one Hessian-vector product "
                      "each); a run that reaches it says so. A model (or block) of at "
                      "most this many parameters is traced exactly instead."),
    click.option("--trace-tol", type=OPEN_UNIT, default=0.05, show_default=True,
                 help="Trace: stop at this relative standard error (about (r / tol)^2 "
                      "probes for a per-probe relative spread r; ~50 on the train CNN)."),
]  # fmt: skip


def _options(*groups):
    """A decorator applying click options in the order given (the first is shown first)."""

    def decorate(fn):
        for option in reversed([o for group in groups for o in group]):
            fn = option(fn)
        return fn

    return decorate


def _analysis_options(fn):
    return _options(analysis_data)(fn)


def _check_costs(*, k, basis_size) -> None:
    """The knob whose range depends on another (the types check the others' ranges at
    parsing), before the model is loaded: one sentence naming the flag."""
    _at_least("--basis-size", basis_size, k + 2)


def _write_json_file(path: str, payload: dict, **provenance) -> None:
    """``payload`` and its ``provenance`` block (``landscape._provenance.provenance``'s keyword
    arguments) as JSON, written whole or not at all."""
    import json

    from landscape._provenance import provenance as block

    payload = {**payload, "provenance": block(**provenance)}
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, path)  # nothing half-written


def _analysis_objective(model_path, data, samples, test_samples, batch_size, scale, imports,
                        regularization, precision, quiet):  # fmt: skip
    """The Objective of an analysis command's model and data options."""
    model = _load_model(model_path, imports)
    recipe = _recipe(
        model_path, data, samples, test_samples, batch_size, scale, imports, regularization
    )
    objective = recipe.build(model, on_note=lambda note: _say(quiet, note))
    return objective if precision == "auto" else objective.with_precision(precision)


def _eigen_summary(eig) -> dict:
    """The eigenvalues as printed and as JSON: values, residuals, cost, converged or capped."""
    click.echo(f"{'#':>3} {'eigenvalue':>14} {'residual':>10}")
    for i, (v, r) in enumerate(zip(eig.values, eig.residuals), 1):
        click.echo(f"{i:>3} {v:>14.6g} {r:>10.2e}")
    click.echo(
        f"{eig.n_hvp} Hessian-vector products ({eig.restarts} restarts of a basis of "
        f"{eig.basis_size}); converged: {eig.converged}"
    )
    if eig.capped:
        click.echo(f"stopped at the cap --max-iter {eig.max_iter}; raise it to certify them")
    return {
        "eigenvalues": [float(v) for v in eig.values],
        "residuals": [float(r) for r in eig.residuals],
        "converged": bool(eig.converged),
        "capped": bool(eig.capped),
        "n_hvp": int(eig.n_hvp),
        "max_iter": eig.max_iter,
        "basis_size": eig.basis_size,
        "restarts": int(eig.restarts),
        "precision": eig.precision,
        "backend": eig.backend,
        "tol": eig.tol,
        "which": eig.which,
    }


def _trace_summary(tr) -> dict:
    """The trace as printed and as JSON: exact, or estimated with its probes and whether it
    converged."""
    if tr.method == "exact":
        click.echo(f"trace {tr.estimate:.6g} (exact: {tr.n_hvp} unit-vector products)")
    else:
        stop = (
            "converged" if tr.converged else f"stopped at the cap --trace-probes {tr.max_samples}"
        )
        click.echo(f"trace {tr.estimate:.6g} ± {tr.stderr:.2g} ({tr.samples} probes, {stop})")
    return {
        "estimate": tr.estimate,
        "stderr": tr.stderr,
        "method": tr.method,
        "n_hvp": int(tr.n_hvp),
        "samples": int(tr.samples),
        "converged": bool(tr.converged),
        "capped": bool(tr.capped),
        "tol": tr.tol,
    }


def _layers_table(objective, curvature, tol, max_iter, with_trace, trace_probes, trace_tol, seed,
                  verbose, json_path, plot_path, quiet) -> None:  # fmt: skip
    """``hessian --layers``: layer_curvature printed as a table, written as JSON and drawn."""
    from landscape.hessian import layer_curvature

    report = layer_curvature(objective, curvature=curvature, tol=tol, max_iter=max_iter,
                             trace=with_trace, trace_samples=trace_probes, trace_tol=trace_tol,
                             seed=seed, verbose=verbose)  # fmt: skip
    width = max(len("layer"), *(len(n) for n in report.names))
    click.echo(f"{'layer':<{width}} {'params':>9} {'lambda_max':>12} {'residual':>9} "
               f"{'trace':>12} {'stderr':>9} {'method':>10}")  # fmt: skip
    for row in report.rows():
        click.echo(f"{row['name']:<{width}} {row['n_params']:>9,} {row['lambda_max']:>12.6g} "
                   f"{row['residual']:>9.1e} {row['trace']:>12.6g} "
                   f"{row['trace_stderr']:>9.2g} {row['trace_method'] or '-':>10}")  # fmt: skip
    click.echo(f"{curvature}, {report.precision}: {report.n_hvp} products; certified: "
               f"{bool(report.converged.all())}")  # fmt: skip
    if json_path:
        settings = {
            "curvature": curvature,
            "tol": tol,
            "max_iter": max_iter,
            "trace": with_trace,
            "trace_samples": trace_probes,
            "trace_tol": trace_tol,
        }
        _write_json_file(json_path, {"layers_report": report.as_dict()}, objective=objective,
                         settings=settings, seeds=seed,
                         converged={"layers": bool(report.converged.all())})  # fmt: skip
        _say(quiet, f"wrote {json_path}")
    if plot_path:
        import matplotlib

        matplotlib.use("Agg")
        from landscape.plot import plot_layer_curvature

        ax = plot_layer_curvature(report)
        ax.figure.savefig(plot_path, dpi=150, bbox_inches="tight")
        _say(quiet, f"wrote {plot_path}")


@main.command()
@click.argument("model_path", metavar="MODEL.keras")
@click.option("--k", type=COUNT, default=5, show_default=True,
              help="Top eigenvalues to compute.")  # fmt: skip
@click.option("--which", type=click.Choice(_checks.options(_checks.Which)),
              default="largest", show_default=True)  # fmt: skip
@_options(eigen_options)
@click.option(
    "--trace",
    "with_trace",
    is_flag=True,
    help="Also the trace (exact for at most --trace-probes parameters, else "
    "Hutchinson's estimate).",
)
@_options(trace_options)
@_out("--density", default=None,
      help="Also the SLQ spectral density, drawn to this image file.")  # fmt: skip
@click.option("--steps", type=COUNT, default=40, show_default=True,
              help="Lanczos steps per SLQ run (memory: steps + 5 vectors of the "
                   "parameters).")  # fmt: skip
@click.option("--runs", type=COUNT, default=2, show_default=True,
              help="SLQ runs (--runs x --steps products).")  # fmt: skip
@_out("--json", "json_path", default=None, help="Write the results as JSON.")
@click.option("--curvature", type=click.Choice(("hessian", "ggn")), default="hessian",
              show_default=True,
              help="The Hessian, or the generalized Gauss-Newton matrix J^T H_l J (PSD; "
                   "mean squared error and cross-entropies only).")  # fmt: skip
@click.option("--variables", "variables", default=None, metavar="REGEX",
              help="Restrict every result to the diagonal block of the trainable variables "
                   "whose path matches REGEX (or a layer's name).")  # fmt: skip
@click.option("--layers", "layers", is_flag=True,
              help="Instead: the certified top eigenvalue (and with --trace the trace) of "
                   "each layer's block, as a table.")  # fmt: skip
@_out("--layers-plot", default=None,
      help="With --layers: draw the per-layer table to this image file.")  # fmt: skip
@_analysis_options
@quiet_option
def hessian(model_path, k, which, tol, max_iter, basis_size, with_trace, trace_probes, trace_tol,
            density, steps, runs, json_path, curvature, variables, layers, layers_plot, data,
            scale, imports, regularization, precision, samples, batch_size, seed,
            quiet):  # fmt: skip
    """Hessian eigenvalues (thick-restart Lanczos, with residuals), trace and spectral density.

    Every iterative part has a cap that bounds its time (--max-iter, --trace-probes; SLQ runs
    exactly --runs x --steps products) and says when it stopped there rather than converged.

    Cost at the defaults, in Hessian-vector products (HVPs) on --samples 1000, on the CNN that
    `landscape train` writes (docs/guide/defaults.md), about 0.5 s each on 2 cores: the
    eigenvalues about 25 HVPs (at most --max-iter 1000 + k); --trace adds about 50 (at most
    --trace-probes 100); --density adds --runs x --steps = 80.

    \b
    Examples:
      landscape hessian sam.keras --k 5
      landscape hessian sgd.keras --k 3 --trace --density sgd_spectrum.png --json sgd.json
      landscape hessian big.keras --k 1 --max-iter 100 --basis-size 10 --trace --trace-probes 50
      landscape hessian cnn.keras --layers --trace --json layers.json --layers-plot layers.png
      landscape hessian cnn.keras --k 3 --variables 'dense_1/' --curvature ggn
    """
    if layers_plot and not layers:
        raise UserError("Option --layers-plot needs --layers.")
    if layers and (density or variables):
        raise UserError("Option --layers cannot be combined with --density or --variables.")
    _check_costs(k=k, basis_size=basis_size)
    _model_paths(model_path)
    verbose = _setup(quiet)
    from landscape.hessian import hessian_eigenvalues, hessian_spectrum, hessian_trace

    objective = _analysis_objective(model_path, data, samples, 0, batch_size, scale, imports,
                                    regularization, precision, quiet)  # fmt: skip
    if layers:
        _layers_table(objective, curvature, tol, max_iter, with_trace, trace_probes, trace_tol,
                      seed, verbose, json_path, layers_plot, quiet)  # fmt: skip
        return
    block = {"variables": variables, "curvature": curvature}
    eig = hessian_eigenvalues(objective, k=k, which=which, tol=tol, max_iter=max_iter,
                              basis_size=basis_size, seed=seed, verbose=verbose,
                              **block)  # fmt: skip
    out = _eigen_summary(eig)
    out.update(curvature=curvature, n_params=int(eig.n_params))
    if variables is not None:
        out["variables"] = list(eig.variables)
    if with_trace:
        tr = hessian_trace(
            objective, samples=trace_probes, tol=trace_tol, seed=seed, verbose=verbose, **block
        )
        out["trace"] = _trace_summary(tr)
    if density:
        import matplotlib

        matplotlib.use("Agg")
        from landscape.plot import plot_spectrum

        spectrum = hessian_spectrum(objective, steps=steps, runs=runs, seed=seed, verbose=verbose,
                                    **block)  # fmt: skip
        ax = plot_spectrum(spectrum)
        ax.figure.savefig(density, dpi=150, bbox_inches="tight")
        out["density"] = {"path": density, "n_hvp": int(spectrum.n_hvp)}
        _say(quiet, f"wrote {density}")
    if json_path:
        converged = {"eigenvalues": bool(eig.converged)}
        if with_trace:
            converged["trace"] = bool(tr.converged)
        settings = {"k": k, "which": which, "tol": tol, "max_iter": max_iter,
                    "basis_size": eig.basis_size, **block, "trace_samples": trace_probes,
                    "trace_tol": trace_tol, "slq_steps": steps, "slq_runs": runs}  # fmt: skip
        _write_json_file(json_path, out, objective=objective, settings=settings, seeds=seed,
                         converged=converged)  # fmt: skip
        _say(quiet, f"wrote {json_path}")


@main.command()
@click.argument("model_path", metavar="MODEL.keras")
@click.option("--k", type=COUNT, default=5, show_default=True,
              help="Top Hessian eigenvalues.")  # fmt: skip
@click.option("--no-hessian", is_flag=True, help="Leave out the Hessian rows (faster).")
@_options(eigen_options, trace_options)
@click.option("--epsilon", type=POSITIVE, default=1e-3, show_default=True,
              help="Box size of Keskar et al.'s ε-sharpness (about ten gradients).")  # fmt: skip
@click.option("--no-epsilon", is_flag=True, help="Leave out the ε-sharpness.")
@click.option("--steps", type=COUNT, default=20, show_default=True,
              help="Gradient-ascent steps of each worst-case metric (one gradient "
                   "each).")  # fmt: skip
@click.option("--average-samples", type=COUNT, default=20, show_default=True,
              help="Random perturbations of each average-case metric (one loss "
                   "each).")  # fmt: skip
@_out("--json", "json_path", default=None, help="Write the report as JSON.")
@_analysis_options
@quiet_option
def sharpness(model_path, k, no_hessian, tol, max_iter, basis_size, trace_probes, trace_tol,
              epsilon, no_epsilon, steps, average_samples, json_path, data, scale, imports,
              regularization, precision, samples, batch_size, seed, quiet):  # fmt: skip
    """Every sharpness measure of a model in one table (sharpness_report).

    The Hessian rows come with hessian_converged and hessian_trace_converged: False when
    Lanczos (--max-iter) or Hutchinson (--trace-probes) stopped at its cap first.

    Cost at the defaults on --samples 1000, on the CNN that `landscape train` writes
    (docs/guide/defaults.md): the eigenvalues about 25 Hessian-vector products (HVPs, about
    0.5 s each on 2 cores; at most --max-iter 1000 + k), the trace about 50 (at most
    --trace-probes 100), the ε-sharpness
    about ten gradients, the worst-case rows 4 x --steps gradients, the average-case rows
    2 x --average-samples losses; --no-hessian leaves out the HVPs.

    \b
    Examples:
      landscape sharpness sam.keras
      landscape sharpness sgd.keras --k 3 --json sgd_sharpness.json
      landscape sharpness big.keras --k 1 --max-iter 100 --trace-probes 50 --no-epsilon \\
        --steps 5 --average-samples 5 --samples 256
    """
    _check_costs(k=k, basis_size=basis_size)
    _model_paths(model_path)
    verbose = _setup(quiet)
    from landscape.sharpness import sharpness_report

    objective = _analysis_objective(model_path, data, samples, None, batch_size, scale, imports,
                                    regularization, precision, quiet)  # fmt: skip
    report = sharpness_report(
        objective, k=k, seed=seed, include_hessian=not no_hessian, eigen_tol=tol,
        eigen_max_iter=max_iter, basis_size=basis_size, trace_tol=trace_tol,
        trace_samples=trace_probes, epsilon=None if no_epsilon else epsilon, steps=steps,
        samples=average_samples, verbose=verbose,
    )  # fmt: skip
    width = max(len(key) for key in report)
    for key, value in report.items():
        shown = f"{value:.6g}" if isinstance(value, float) else str(value)
        click.echo(f"{key:<{width}}  {shown}")
    if json_path:
        converged = {k: bool(v) for k, v in report.items() if k.endswith("converged")}
        settings = {"k": k, "include_hessian": not no_hessian, "eigen_tol": tol,
                    "eigen_max_iter": max_iter, "basis_size": basis_size, "trace_tol": trace_tol,
                    "trace_samples": trace_probes, "epsilon": None if no_epsilon else epsilon,
                    "steps": steps, "samples": average_samples}  # fmt: skip
        _write_json_file(json_path, report, objective=objective, settings=settings, seeds=seed,
                         converged=converged)  # fmt: skip
        _say(quiet, f"wrote {json_path}")


@main.command("batch-spectrum")
@click.argument("model_path", metavar="MODEL.keras")
@click.option("--batches", type=COUNT, default=10, show_default=True,
              help="Mini-batches: the first N of the (first --samples) training data.")  # fmt: skip
@click.option("--batch-size", type=COUNT, default=128, show_default=True,
              help="Samples per mini-batch: each batch's own loss is analysed, so this is "
                   "part of the result.")  # fmt: skip
@click.option("--k", type=COUNT, default=1, show_default=True,
              help="Top eigenvalues per batch.")  # fmt: skip
@_options(eigen_options)
@click.option("--curvature", type=click.Choice(("hessian", "ggn")), default="hessian",
              show_default=True,
              help="The Hessian, or the generalized Gauss-Newton matrix J^T H_l J (PSD; "
                   "mean squared error and cross-entropies only).")  # fmt: skip
@click.option(
    "--full",
    is_flag=True,
    help="Also the top eigenvalues of the loss over all --samples (drawn as a line).",
)
@_out("--json", "json_path", default=None, help="Write the results as JSON.")
@_out("--plot", "plot_path", default=None, help="Draw the distribution to this image file.")
@click.option(
    "--kind",
    type=click.Choice(_checks.options(_checks.BatchPlotKind)),
    default="histogram",
    show_default=True,
    help="With --plot: the figure.",
)
@_options([data_option, scale_option, import_option, regularization_option, precision_option])
@click.option("--samples", type=SIZE, default=2000, show_default=True,
              help="Use the first N training samples (0: all).")  # fmt: skip
@click.option("--seed", type=SEED, default=0, show_default=True)
@quiet_option
def batch_spectrum(model_path, batches, batch_size, k, tol, max_iter, basis_size, curvature, full,
                   json_path, plot_path, kind, data, scale, imports, regularization, precision,
                   samples, seed, quiet):  # fmt: skip
    """Top Hessian (or GGN) eigenvalues of each mini-batch's loss, and their spread.

    The training data are cut into consecutive batches of --batch-size samples in their
    stored order; each batch's own loss (the model's, on that batch alone) gets certified
    eigenvalues (thick-restart Lanczos with residuals, as the hessian command).

    \b
    Examples:
      landscape batch-spectrum sam.keras --batches 20 --batch-size 128 --full --plot bs.png
      landscape batch-spectrum sgd.keras --k 3 --curvature ggn --json sgd_batches.json
    """
    _check_costs(k=k, basis_size=basis_size)
    if samples and samples < batch_size:
        raise UserError(f"--samples ({samples}) must be at least --batch-size ({batch_size}).")
    _model_paths(model_path)
    verbose = _setup(quiet)
    from landscape.batch_spectra import batch_spectrum as compute

    objective = _analysis_objective(model_path, data, samples, 0, batch_size, scale, imports,
                                    regularization, precision, quiet)  # fmt: skip
    spec = compute(objective, k=k, batches=batches, batch_size=batch_size, curvature=curvature,
                   full=full, tol=tol, max_iter=max_iter, basis_size=basis_size, seed=seed,
                   verbose=verbose)  # fmt: skip
    _batch_table(spec)
    if json_path:
        converged = {"every_batch": bool(all(spec.converged))}
        if full:
            converged["full"] = bool(spec.full_converged)
        _write_json_file(json_path, {"model": os.fspath(model_path), **spec.as_dict()},
                         objective=objective, seeds=seed, converged=converged,
                         settings={"k": k, "batches": batches, "batch_size": batch_size,
                                   "curvature": curvature, "tol": tol, "max_iter": max_iter,
                                   "basis_size": basis_size})  # fmt: skip
        _say(quiet, f"wrote {json_path}")
    if plot_path:
        import matplotlib

        matplotlib.use("Agg")
        from landscape.plot import plot_batch_spectrum

        label = pathlib.Path(model_path).stem
        ax = plot_batch_spectrum(spec, labels=label, kind=kind)
        ax.figure.savefig(plot_path, dpi=150, bbox_inches="tight")
        _say(quiet, f"wrote {plot_path}")


def _batch_table(spec) -> None:
    """batch-spectrum's table: one row per batch, then the spread and the full-data value."""
    click.echo(f"{'batch':>5} {'size':>6} {'lambda_1':>14} {'residual':>10} {'certified':>9}")
    for i, (size, values, res, ok) in enumerate(
        zip(spec.batch_sizes, spec.values, spec.residuals, spec.converged), 1
    ):
        click.echo(f"{i:>5} {size:>6} {values[0]:>14.6g} {res.max():>10.2e} {str(bool(ok)):>9}")
    s = spec.summary()
    click.echo(f"lambda_1 over {len(spec.batch_sizes)} batches: mean {s['mean']:.6g}, std "
               f"{s['std']:.3g}, min {s['min']:.6g}, median {s['median']:.6g}, max "
               f"{s['max']:.6g}; {int(spec.n_hvp.sum())} products")  # fmt: skip
    if spec.full_values is not None:
        worst = spec.full_residuals.max()
        click.echo(f"full data: lambda_1 {spec.full_lambda_max:.6g} (residual {worst:.2e}, "
                   f"certified {spec.full_converged})")  # fmt: skip


# -- figures -------------------------------------------------------------------------------------


@main.command()
@data_option
@click.option("--out-dir", type=click.Path(file_okay=False), default="out/figures",
              show_default=True, callback=_output_folder,
              help="New or empty directory, or one this configuration wrote (then resumed); "
              "another configuration's directory is refused before any training.")  # fmt: skip
@click.option("--quick", is_flag=True,
              help="The short path: a tiny preset (2 seeds of width-4 ResNets, one epoch on "
                   "256 examples, 5-point grids; what the tests run). Without it the full "
                   "experiment runs (minutes).")  # fmt: skip
@click.option("--seeds", type=COUNT, default=None,
              help="Seeds 0..N-1 for both optimizers [3].")  # fmt: skip
@click.option("--label-noise", type=UNIT, default=None,
              help="Fraction of training labels changed to another class [0.4].")  # fmt: skip
@click.option("--train-samples", type=SIZE, default=None,
              help="Training examples, the first N (0: all) [2000].")  # fmt: skip
@click.option("--epochs", type=COUNT, default=None, help="Training epochs [30; quick 1].")
@click.option("--depth", type=Int(min=8), default=None, callback=_resnet_depth,
              help="ResNet depth 6n+2 [8].")  # fmt: skip
@click.option("--width", type=COUNT, default=None, help="ResNet base width [8; quick 4].")
@click.option("--lr", type=POSITIVE, default=None,
              help="Peak learning rate (cosine decay) [0.05].")  # fmt: skip
@click.option("--rho", type=NONNEGATIVE, default=None, help="SAM radius [0.1].")
@click.option("--augment", is_flag=True, default=None, help="Random flips/shifts in training.")
@click.option("--grid", default=None, help="Grid of both surface axes, min:max:num, with 0 "
              "[-0.5:0.5:17].")  # fmt: skip
@click.option("--basin-rise", type=POSITIVE, default=None,
              help="Basin = grid points within this loss of the centre's [1.0].")  # fmt: skip
@click.option("--samples", type=SIZE, default=None,
              help="Training examples of surfaces and reports (0: all) [500].")  # fmt: skip
@click.option("--test-samples", type=SIZE, default=None,
              help="Test examples of the interpolation (0: all) [500].")  # fmt: skip
@click.option("--k", type=COUNT, default=None, help="Hessian eigenvalues in the reports [3].")
@quiet_option
def figures(data, out_dir, quick, seeds, label_noise, train_samples, epochs, depth, width, lr,
            rho, augment, grid, basin_rise, samples, test_samples, k, quiet):  # fmt: skip
    """Train SGD and SAM ResNets on noisy labels over several seeds; draw and compare them.

    Writes to OUT_DIR: config.json, seed_<s>/{sgd,sam}.keras and surfaces, no_sam.png,
    with_sam.png, comparison.png, sharpness.png, interpolation.png, summary.json (per seed, mean
    ± standard error, paired t-tests, captions) and summary.md. Rerunning resumes.

    \b
    Examples:
      landscape figures --quick --out-dir /tmp/figs
      landscape figures --data ../shared/data/cifar10_10k.npz --train-samples 0 --out-dir figs
    """
    _grids(grid=grid)
    verbose = _setup(quiet)
    import dataclasses

    from landscape.figures import QUICK, FiguresConfig, make_figures

    config = QUICK if quick else FiguresConfig()
    overrides = {"data": data, "seeds": seeds, "label_noise": label_noise,
                 "train_samples": train_samples, "epochs": epochs, "depth": depth,
                 "width": width, "learning_rate": lr, "rho": rho, "augment": augment,
                 "grid": grid, "basin_rise": basin_rise, "surface_samples": samples,
                 "test_samples": test_samples}  # fmt: skip
    config = dataclasses.replace(config, **{k_: v for k_, v in overrides.items() if v is not None})
    if k is not None:
        config = dataclasses.replace(config, report={**config.report, "k": k})
    result = make_figures(out_dir, config, verbose=verbose)
    for path in result["written"]:
        _say(quiet, f"wrote {path}")
    for key in ("test_acc", "hessian_eigenvalue_1", "hessian_trace", "basin_area"):
        comparison = result["summary"]["comparison"].get(key)
        if comparison is not None:
            click.echo(comparison["sentence"])


# -- connect -------------------------------------------------------------------------------------


@main.command()
@click.argument("model_a", metavar="A.keras")
@click.argument("model_b", metavar="B.keras")
@click.option("--curve", type=click.Choice(("bezier", "polychain")), default="bezier",
              show_default=True,
              help="Quadratic Bezier curve, or polygonal chain a -> bend -> b.")  # fmt: skip
@data_option
@scale_option
@import_option
@click.option("--samples", type=SIZE, default=0,
              help="Use the first N training samples [all].")  # fmt: skip
@click.option("--test-samples", type=Int(min=-1), default=-1,
              help="Use the first N test samples; 0 skips the test set [all].")  # fmt: skip
@click.option("--epochs", type=SIZE, default=10, show_default=True,
              help="Passes over the training data fitting the bend (0: none).")  # fmt: skip
@click.option("--batch-size", type=COUNT, default=128, show_default=True,
              help="Minibatch of the curve's training and of the BatchNorm passes.")  # fmt: skip
@click.option("--lr", type=POSITIVE, default=0.01, show_default=True,
              help="SGD learning rate.")  # fmt: skip
@click.option("--momentum", type=UNIT, default=0.9, show_default=True, help="SGD momentum.")
@click.option("--points", type=Int(min=2), default=21, show_default=True,
              help="Evenly spaced t in [0, 1] evaluated on both paths.")  # fmt: skip
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="Seed of the t draws and the shuffling.")  # fmt: skip
@_out("--out", default=None,
      help="Write the result (t, paths' values, barriers, history) as JSON.")  # fmt: skip
@_out("--plot", "plot_path", default=None,
      help="Draw both paths' training loss against t to this image.")  # fmt: skip
@_out("--plane", "plane_path", default=None,
      help="Draw the plane through a, the bend and b (and the curve) here.")  # fmt: skip
@click.option("--plane-points", type=Int(min=2), default=9, show_default=True,
              help="Grid points per axis of --plane (points^2 evaluations).")  # fmt: skip
@quiet_option
def connect(model_a, model_b, curve, data, scale, imports, samples, test_samples, epochs,
            batch_size, lr, momentum, points, seed, out, plot_path, plane_path, plane_points,
            quiet):  # fmt: skip
    """Fit a low-loss curve between two models (mode connectivity) and compare barriers.

    The bend of a Bezier curve (or polygonal chain) from A to B is trained with SGD on the
    expected loss along the curve (Garipov et al. 2018, arXiv 1802.10026); then the loss and
    accuracy are evaluated along the straight line and the curve, BatchNorm statistics
    recomputed at every point. The barrier is the highest loss on a path minus the mean of
    its two ends.

    Cost at the defaults: --epochs 10 over the training data fitting the bend (one gradient
    of the curve per step), then 2 x --points 21 points, each a BatchNorm pass over the
    training data and an evaluation; about 45 s of CPU for two CNNs of `landscape train`.

    \b
    Examples:
      landscape connect sgd_seed0.keras sgd_seed1.keras --epochs 10 --out connect.json
      landscape connect a.keras b.keras --curve polychain --plot paths.png --plane plane.png
    """
    if plane_path and epochs == 0:
        raise UserError("--plane needs a trained bend (--epochs at least 1).")
    _model_paths(model_a, model_b)
    verbose = _setup(quiet)
    import keras

    from landscape.connectivity import connect as connect_models
    from landscape.connectivity import connection_plane
    from landscape.data import match_model, read_dataset

    first = _load_model(model_a, imports)
    second = _load_model(model_b, imports)
    dataset = match_model(read_dataset(data, scale=scale), first)
    for note in dataset.notes:
        _say(quiet, note)
    train = tuple(a[:samples] for a in dataset.train) if samples else tuple(dataset.train)
    test = None
    if test_samples != 0:
        test = tuple(a[: None if test_samples < 0 else test_samples] for a in dataset.test)
    optimizer = keras.optimizers.SGD(lr, momentum=momentum)
    result = connect_models(
        first, second, train, curve=curve, test_data=test, epochs=epochs,
        batch_size=batch_size, optimizer=optimizer, points=points, seed=seed, verbose=verbose,
    )  # fmt: skip
    click.echo(f"linear_barrier {result.linear_barrier:.6g}")
    click.echo(f"curve_barrier  {result.curve_barrier:.6g}")
    for key in result.linear:
        click.echo(
            f"{key}: straight line max {result.linear[key].max():.4f} min "
            f"{result.linear[key].min():.4f}; curve max {result.curve[key].max():.4f} min "
            f"{result.curve[key].min():.4f}"
        )
    if out:
        settings = {"curve": curve, "epochs": epochs, "batch_size": batch_size, "lr": lr,
                    "momentum": momentum, "points": points}  # fmt: skip
        _write_json_file(out, result.as_dict(), **_pair_fingerprints(first, second, train, test),
                         settings=settings, seeds=seed)  # fmt: skip
        _say(quiet, f"wrote {out}")
    if plot_path or plane_path:
        import matplotlib

        matplotlib.use("Agg")
        from landscape.plot import plot_connection, plot_connection_plane

    if plot_path:
        ax = plot_connection(result)
        ax.figure.savefig(plot_path, dpi=150, bbox_inches="tight")
        _say(quiet, f"wrote {plot_path}")
    if plane_path:
        plane = connection_plane(first, second, result, train, points=plane_points,
                                 batch_size=batch_size)  # fmt: skip
        ax = plot_connection_plane(plane)
        ax.figure.savefig(plane_path, dpi=150, bbox_inches="tight")
        _say(quiet, f"wrote {plane_path}")


def _pair_fingerprints(first, second, train, test) -> dict:
    """The provenance fingerprints of ``connect``: both models' weights and both splits."""
    from landscape._provenance import model_weights_fingerprint
    from landscape.directions import fingerprint_arrays

    models = {"a": model_weights_fingerprint(first), "b": model_weights_fingerprint(second)}
    data = {"train": fingerprint_arrays(train), "test": test and fingerprint_arrays(test)}
    return {"model_fingerprint": models, "data_fingerprint": data}


# -- weights -------------------------------------------------------------------------------------


@main.command()
@click.argument("model_path", metavar="MODEL.keras")
@click.option(
    "--min-tail",
    type=Int(min=2),
    default=10,
    show_default=True,
    help="Fewest eigenvalues a power-law tail is fitted to (fewer: α is NaN).",
)
@_out("--json", "json_path", default=None, help="Write every layer's spectrum as JSON.")
@_out("--plot", "plot_path", default=None, help="Draw α per layer (with its error) as a PNG.")
@import_option
@quiet_option
def weights(model_path, min_tail, json_path, plot_path, imports, quiet):  # fmt: skip
    """Spectra of the weight matrices, without data (weight_spectra).

    Per layer with a matrix (Dense, Embedding, ConvND per spatial position, attention per
    head): the power-law exponent α of the eigenvalues of WᵀW and its standard error, the
    stable rank and the spectral norm. Layers without a matrix are listed as skipped.

    \b
    Examples:
      landscape weights sam.keras
      landscape weights sgd.keras --json sgd_weights.json --plot sgd_alpha.png
    """
    _model_paths(model_path)
    _setup(quiet)
    from landscape.weights import weight_spectra

    model = _load_model(model_path, imports)
    result = weight_spectra(model, min_tail=min_tail)
    width = max([len(r["name"]) for r in result.rows()] + [5])
    click.echo(f"{'layer':<{width}}  {'matrices':>12}  {'alpha':>13}  {'stable rank':>11}  "
               f"{'spectral norm':>13}")  # fmt: skip
    for r in result.rows():
        shape = f"{r['n_matrices']}x{r['matrix_shape'][0]}x{r['matrix_shape'][1]}"
        alpha = f"{r['alpha']:.2f} ± {r['alpha_stderr']:.2f}"
        click.echo(f"{r['name']:<{width}}  {shape:>12}  {alpha:>13}  {r['stable_rank']:>11.4g}  "
                   f"{r['spectral_norm']:>13.4g}")  # fmt: skip
    if json_path:
        _write_json_file(json_path, result.as_dict(), model=model, settings={"min_tail": min_tail})
        _say(quiet, f"wrote {json_path}")
    if plot_path:
        import matplotlib

        matplotlib.use("Agg")
        from landscape.plot import plot_weight_spectra

        ax = plot_weight_spectra(result, title=os.path.basename(model_path))
        ax.figure.savefig(plot_path, dpi=150, bbox_inches="tight")
        _say(quiet, f"wrote {plot_path}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
