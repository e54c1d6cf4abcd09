"""The ``landscape`` command line: a thin click layer over the library."""

from __future__ import annotations

import click

from landscape import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="landscape")
def main() -> None:
    """Train with SAM and measure the loss landscape of Keras models.

    \b
    Examples:
      landscape --version
      landscape --help
    """


if __name__ == "__main__":
    main()
