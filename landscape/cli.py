"""The ``landscape`` command line: a thin click layer over the library.

Every command parses its options, calls the library, writes files and reports. A user error
(missing file, bad grid, unknown data set, incompatible surface file, failed download) ends with
exit code 2 and one sentence on stderr, without a traceback.
"""

from __future__ import annotations

import logging
import os
import pathlib
import sys

import click

from landscape import __version__

logger = logging.getLogger("landscape")


class UserError(click.ClickException):
    """One sentence, exit code 2."""

    exit_code = 2


class _Group(click.Group):
    """Turns the library's ValueErrors and file errors into ``UserError``s."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (ValueError, OSError) as err:
            message = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
            raise UserError(message) from None


def _setup(quiet: bool) -> int:
    """Logging and Keras verbosity for a command; returns the Keras ``verbose`` value."""
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")
    return 0 if quiet else 1


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        click.echo(text)


quiet_option = click.option("--quiet", "-q", is_flag=True, help="Only errors; no progress bars.")
data_option = click.option(
    "--data",
    default="embedded",
    show_default=True,
    help="'embedded', mnist, fashion_mnist, cifar10, cifar100 or an .npz file.",
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
@click.option("--model", "model_name", type=click.Choice(["mlp", "cnn", "resnet"]), default="cnn",
              show_default=True, help="Architecture from the zoo.")  # fmt: skip
@click.option("--depth", type=int, default=8, show_default=True, help="ResNet depth (6n+2).")
@click.option("--width", type=int, default=16, show_default=True, help="ResNet base width.")
@data_option
@click.option("--optimizer", type=click.Choice(["sgd", "sam", "asam"]), default="sam",
              show_default=True)  # fmt: skip
@click.option("--rho", type=float, default=None, help="SAM radius [0.05; ASAM 0.5].")
@click.option("--lr", type=float, default=0.01, show_default=True, help="Learning rate.")
@click.option("--momentum", type=float, default=0.9, show_default=True)
@click.option("--weight-decay", type=float, default=None, help="Decoupled weight decay of SGD.")
@click.option("--epochs", type=int, default=3, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--samples", type=int, default=0, help="Train on the first N samples [all].")
@click.option("--augment", is_flag=True, help="Random flips and shifts of the training images.")
@click.option("--save-every", type=int, default=0,
              help="Save weights every N epochs (and at start) for trajectory plots.")  # fmt: skip
@click.option("--out", type=click.Path(dir_okay=False), default="model.keras", show_default=True)
@quiet_option
def train(model_name, depth, width, data, optimizer, rho, lr, momentum, weight_decay, epochs,
          batch_size, seed, samples, augment, save_every, out, quiet):  # fmt: skip
    """Train a model with SGD, SAM or ASAM and save it as a .keras file.

    \b
    Examples:
      landscape train --optimizer sgd --out sgd.keras
      landscape train --model resnet --data cifar10 --optimizer sam --rho 0.05 --epochs 20
      landscape train --optimizer sam --save-every 1 --out runs/sam.keras
    """
    verbose = _setup(quiet)
    from landscape.data import load_dataset
    from landscape.train import CheckpointEvery
    from landscape.train import train as train_model

    if not str(out).endswith(".keras"):
        raise UserError(f"--out must end in .keras. Received: {out}.")
    (x, y), test = load_dataset(data)
    dataset = ((x[:samples], y[:samples]) if samples else (x, y)), test
    model_kwargs = {"depth": depth, "width": width} if model_name == "resnet" else {}
    callbacks = []
    checkpoint_dir = None
    if save_every:
        checkpoint_dir = pathlib.Path(out).with_suffix("").as_posix() + "_checkpoints"
        callbacks.append(CheckpointEvery(checkpoint_dir, every=save_every))
    result = train_model(
        dataset, model=model_name, optimizer=optimizer, epochs=epochs, batch_size=batch_size,
        learning_rate=lr, momentum=momentum, weight_decay=weight_decay, rho=rho, seed=seed,
        model_kwargs=model_kwargs, callbacks=callbacks, augment=augment,
        verbose=2 if verbose else 0,
    )  # fmt: skip
    pathlib.Path(out).parent.mkdir(parents=True, exist_ok=True)
    result.model.save(out)
    _say(quiet, f"saved {out}" + (f" (checkpoints in {checkpoint_dir})" if checkpoint_dir else ""))
    click.echo(
        f"train loss {result.train_loss:.4f}  train acc {result.train_acc:.4f}  "
        f"test loss {result.test_loss:.4f}  test acc {result.test_acc:.4f}"
    )


# -- surface -------------------------------------------------------------------------------------


def _load_model(path):
    import keras

    import sam  # noqa: F401  (registers SAM and SAMModel for deserialization)

    if not os.path.isfile(path):
        raise UserError(f"Model file {path!r} does not exist.")
    return keras.models.load_model(path)


def _objective(model, data, samples, test_samples, batch_size):
    from landscape.data import load_dataset
    from landscape.objective import Objective

    (x, y), (xt, yt) = load_dataset(data)
    if tuple(x.shape[1:]) != tuple(model.input_shape[1:]):
        raise UserError(
            f"The data ({data}) has inputs of shape {x.shape[1:]}; the model expects "
            f"{tuple(model.input_shape[1:])}."
        )
    train_part = (x[:samples], y[:samples]) if samples else (x, y)
    test_part = None
    if test_samples != 0:
        test_part = (xt[:test_samples], yt[:test_samples]) if test_samples else (xt, yt)
    return Objective(model, train_part, batch_size=batch_size, test_data=test_part)


@main.command()
@click.argument("model_path", metavar="MODEL.keras")
@click.option("--model2", type=str, default=None,
              help="Direction 1 interpolates MODEL -> MODEL2 (a=0 is MODEL).")  # fmt: skip
@click.option("--x", "x_spec", default=None, help="Grid of direction 1, min:max:num [-1:1:21].")
@click.option("--y", "y_spec", default=None, help="Grid of direction 2 (makes a 2D surface).")
@click.option("--norm", type=click.Choice(["filter", "layer", "weight", "none"]), default="filter",
              show_default=True)  # fmt: skip
@click.option("--ignore", type=click.Choice(["biasbn", "none"]), default="biasbn",
              show_default=True)  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of random directions.")
@data_option
@click.option("--samples", type=int, default=0, help="Use the first N training samples [all].")
@click.option("--test-samples", type=int, default=-1,
              help="Use the first N test samples; 0 skips the test set [all].")  # fmt: skip
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default="surface.h5", show_default=True)
@quiet_option
def surface(model_path, model2, x_spec, y_spec, norm, ignore, seed, data, samples, test_samples,
            batch_size, out, quiet):  # fmt: skip
    """Compute a 1D or 2D loss surface into an HDF5 file (resumes an existing one).

    \b
    Examples:
      landscape surface sam.keras --x=-1:1:51 --y=-1:1:51 --out sam.h5
      landscape surface sgd.keras --model2 sam.keras --x=-0.5:1.5:41 --out sgd_to_sam.h5
    """
    verbose = _setup(quiet)
    from landscape.directions import interpolation_direction, random_direction
    from landscape.surface import compute_surface

    model = _load_model(model_path)
    objective = _objective(
        model, data, samples, None if test_samples < 0 else test_samples, batch_size
    )
    if model2:
        first = interpolation_direction(model, _load_model(model2))
        x_spec = x_spec or "-0.5:1.5:41"
    else:
        first = random_direction(model, norm=norm, ignore=ignore, seed=seed)
        x_spec = x_spec or "-1:1:21"
    directions = [first]
    if y_spec:
        directions.append(
            random_direction(model, norm=norm, ignore=ignore, seed=seed + 1, orthogonal_to=None)
        )
    surf = compute_surface(objective, directions, x=x_spec, y=y_spec, path=out, verbose=verbose)
    _say(quiet, f"wrote {out}: {surf.ndim}D surface of shape {surf.shape}")
    for name, values in surf.values.items():
        click.echo(f"{name}: min {float(values.min()):.4f}  max {float(values.max()):.4f}")


# -- plot ----------------------------------------------------------------------------------------


@main.command()
@click.argument("surface_path", metavar="SURF.h5")
@click.option("--kind", type=click.Choice(["contour", "contourf", "heatmap", "surface", "line"]),
              default=None, help="Plot kind [contour for 2D, line for 1D].")  # fmt: skip
@click.option("--metric", default="train_loss", show_default=True)
@click.option("--log", is_flag=True, help="Logarithmic colour scale / y axis.")
@click.option("--levels", type=int, default=None, help="Number of contour levels [15].")
@click.option("--vmin", type=float, default=None)
@click.option("--vmax", type=float, default=None)
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Image file (.png, .pdf, .svg) [SURF with .png].")  # fmt: skip
@quiet_option
def plot(surface_path, kind, metric, log, levels, vmin, vmax, out, quiet):
    """Draw a surface file (ours or loss-landscape's) to an image.

    \b
    Examples:
      landscape plot sam.h5 --kind contour --log --out sam.png
      landscape plot sgd_to_sam.h5 --out interpolation.pdf
    """
    _setup(quiet)
    import matplotlib

    matplotlib.use("Agg")
    from landscape.plot import plot_surface
    from landscape.surface import Surface

    if not os.path.isfile(surface_path):
        raise UserError(f"Surface file {surface_path!r} does not exist.")
    surf = Surface.load(surface_path)
    kind = kind or ("line" if surf.ndim == 1 else "contour")
    out = out or str(pathlib.Path(surface_path).with_suffix(".png"))
    ax = plot_surface(surf, metric=metric, kind=kind, log=log, levels=levels, vmin=vmin, vmax=vmax)
    ax.figure.savefig(out, dpi=150, bbox_inches="tight")
    _say(quiet, f"wrote {out}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
