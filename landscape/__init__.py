"""Loss-landscape analysis for Keras 3 models: surfaces, Hessian spectra, sharpness, figures."""

from sam._compat import require_tensorflow

require_tensorflow()

from landscape.data import load_dataset, load_embedded  # noqa: E402

__all__ = ["load_dataset", "load_embedded"]
__version__ = "0.1.0"
