"""The former name of ``landscape.executors`` (surface workers), kept so old imports work.

New code imports ``landscape.executors``; this module only re-exports its names.
"""

from landscape.executors import (  # noqa: F401 (re-exported)
    _IMPORTED,
    MAX_RETRIES,
    ObjectiveRecipe,
    ProcessPool,
    SurfaceJob,
    chunk_points,
    dask_executor,
    evaluate_chunk,
    evaluate_points,
    import_modules,
    load_model,
    make_executor,
    mpi_executor,
    pin_threads,
    process_pool,
    run_chunks,
    submit_points,
    worker_count,
)
