"""Loss-landscape analysis for Keras 3 models: surfaces, Hessian spectra, sharpness, figures."""

from sam._compat import require_tensorflow

require_tensorflow()

from landscape.data import load_dataset, load_embedded  # noqa: E402
from landscape.directions import (  # noqa: E402
    Direction,
    FilterRule,
    PCAResult,
    filter_axes,
    filter_rules,
    interpolation_direction,
    orthogonalize,
    pca_directions,
    random_direction,
)
from landscape.distributed import (  # noqa: E402
    ObjectiveRecipe,
    ProcessPool,
    dask_executor,
    mpi_executor,
    process_pool,
)
from landscape.hessian import (  # noqa: E402
    EigenResult,
    SpectrumResult,
    TraceResult,
    hessian_eigenvalues,
    hessian_spectrum,
    hessian_trace,
)
from landscape.objective import Objective  # noqa: E402
from landscape.plot import (  # noqa: E402
    plot_comparison,
    plot_spectrum,
    plot_surface,
    plot_trajectory,
)
from landscape.sharpness import (  # noqa: E402
    AverageSharpness,
    EpsilonSharpness,
    WorstCaseSharpness,
    average_sharpness,
    epsilon_sharpness,
    sharpness_report,
    worst_case_sharpness,
)
from landscape.surface import Surface, compute_surface, parse_grid  # noqa: E402

__all__ = [
    "AverageSharpness",
    "Direction",
    "EigenResult",
    "EpsilonSharpness",
    "FilterRule",
    "Objective",
    "ObjectiveRecipe",
    "PCAResult",
    "ProcessPool",
    "SpectrumResult",
    "Surface",
    "TraceResult",
    "WorstCaseSharpness",
    "average_sharpness",
    "compute_surface",
    "dask_executor",
    "epsilon_sharpness",
    "filter_axes",
    "filter_rules",
    "hessian_eigenvalues",
    "hessian_spectrum",
    "hessian_trace",
    "interpolation_direction",
    "load_dataset",
    "load_embedded",
    "mpi_executor",
    "orthogonalize",
    "parse_grid",
    "pca_directions",
    "plot_comparison",
    "plot_spectrum",
    "plot_surface",
    "plot_trajectory",
    "process_pool",
    "random_direction",
    "sharpness_report",
    "worst_case_sharpness",
]
__version__ = "0.1.0"
