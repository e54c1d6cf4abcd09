"""Loss-landscape analysis for Keras 3 models: surfaces, Hessian spectra, sharpness, figures.

The public names load lazily (PEP 562): ``import landscape`` imports no TensorFlow, and the first
use of a name (``landscape.Objective``) imports the submodule that defines it. Before a submodule
that needs TensorFlow loads, ``sam._compat.require_tensorflow`` checks that TensorFlow is the Keras
backend and raises one ImportError sentence if it is missing. So ``landscape --version``,
``--help`` and the plotting of an existing surface file start without TensorFlow.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from landscape._version import __version__  # noqa: F401 (public)

# Where each public name is defined: submodule -> names.
_PUBLIC = {
    "connectivity": ("ConnectResult", "connect", "connection_plane"),
    "data": ("flip_labels", "load_dataset", "load_embedded"),
    "directions": (
        "Direction",
        "FilterRule",
        "PCAResult",
        "filter_axes",
        "filter_rules",
        "interpolation_direction",
        "orthogonalize",
        "pca_directions",
        "random_direction",
    ),
    "diagonal": ("DiagonalResult", "hessian_diagonal"),
    "executors": (
        "ObjectiveRecipe",
        "ProcessPool",
        "dask_executor",
        "mpi_executor",
        "process_pool",
    ),
    "hessian": (
        "EigenResult",
        "LayerCurvature",
        "SpectrumResult",
        "TraceResult",
        "hessian_eigenvalues",
        "hessian_spectrum",
        "hessian_trace",
        "layer_curvature",
    ),
    "objective": ("Objective",),
    "planes": ("Plane", "eigenvector_directions", "plane_through"),
    "plot": (
        "plot_comparison",
        "plot_connection",
        "plot_connection_plane",
        "plot_layer_curvature",
        "plot_sharpness",
        "plot_spectrum",
        "plot_surface",
        "plot_trajectory",
        "plot_batch_spectrum",
        "plot_weight_spectra",
    ),
    "sharpness": (
        "AverageSharpness",
        "EpsilonSharpness",
        "WorstCaseSharpness",
        "average_sharpness",
        "epsilon_sharpness",
        "sharpness_report",
        "worst_case_sharpness",
    ),
    "surface": ("Surface", "compute_surface", "parse_grid"),
    "tracking": ("SharpnessTracker", "stability_threshold"),
    "batch_spectra": ("BatchSpectrum", "batch_spectrum"),
    "weights": (
        "LayerSpectrum",
        "PowerLawFit",
        "WeightSpectra",
        "fit_power_law",
        "weight_spectra",
    ),
}
_SUBMODULE_OF = {name: module for module, names in _PUBLIC.items() for name in names}

# Submodules meant to import no TensorFlow (tests/test_startup.py checks them): they load without
# the TensorFlow check, so that reading and drawing a surface file needs no TensorFlow.
_WITHOUT_TENSORFLOW = frozenset({"_checks", "_version", "cli", "io", "plot", "surface"})

__all__ = sorted(_SUBMODULE_OF)


# Submodules that need TensorFlow as the Keras backend in this version; the others (the
# Objective and the analyses on it) run on Keras's JAX and PyTorch backends too.
_TENSORFLOW_ONLY = frozenset(
    {
        "_batches",
        "_distribute",
        "_tf_engine",
    }
)


def _submodule(module: str):
    """``landscape.<module>``, after the backend check: none for the TensorFlow-free modules,
    TensorFlow for ``_TENSORFLOW_ONLY``, any supported Keras backend for the others."""
    if module in _TENSORFLOW_ONLY:
        from sam._compat import require_tensorflow

        require_tensorflow(f"landscape.{module}")
    elif module not in _WITHOUT_TENSORFLOW:
        from sam._backend import adapter

        adapter()
    return importlib.import_module(f"{__name__}.{module}")


def __getattr__(name: str) -> Any:
    """A public name (or a submodule such as ``landscape.io``), imported on first use."""
    if name in _SUBMODULE_OF:
        value = getattr(_submodule(_SUBMODULE_OF[name]), name)
    elif (
        name.isidentifier()
        and not name.startswith("__")
        and importlib.util.find_spec(f"{__name__}.{name}") is not None
    ):
        value = _submodule(name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later uses skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
