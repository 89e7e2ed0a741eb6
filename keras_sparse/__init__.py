"""keras_sparse: sparsity and low-precision training for Keras 3.

    import keras_sparse as ks
    model = ks.prune(model, 0.9, schedule=ks.schedules.PolynomialDecay(0, 0.9, 0, 2000))
    model.fit(x, y, callbacks=[ks.callbacks.Pruning()])
    ks.report(model)
    plain = ks.strip(model)
"""

__version__ = "0.1.0"

from keras_sparse import controllers
from keras_sparse import criteria
from keras_sparse import distributions
from keras_sparse import gates
from keras_sparse import layers
from keras_sparse import methods
from keras_sparse import ops
from keras_sparse import patterns
from keras_sparse import quantizers
from keras_sparse import schedules
from keras_sparse import scorers
from keras_sparse import callbacks
from keras_sparse import constraints
from keras_sparse import metrics
from keras_sparse import optimizers
from keras_sparse import initializers
from keras_sparse import regularizers
from keras_sparse.regularizers import slimming
from keras_sparse import testing
from keras_sparse.convert import prune
from keras_sparse.convert import strip
from keras_sparse.learned import gate
from keras_sparse.export import export
from keras_sparse.export import load_exported
from keras_sparse.quantize import calibrate
from keras_sparse.quantize import quantize
from keras_sparse.prune_at_init import apply_initial_masks
from keras_sparse.prune_at_init import prune_at_init
from keras_sparse.report import Report
from keras_sparse.report import report
from keras_sparse.sensitivity import SensitivityTable
from keras_sparse.sensitivity import sensitivity
from keras_sparse.allocation import allocate
from keras_sparse.compression_search import CompressionResult
from keras_sparse.compression_search import CompressionTrials
from keras_sparse.compression_search import auto_compress

__all__ = [
    "CompressionResult",
    "CompressionTrials",
    "Report",
    "SensitivityTable",
    "allocate",
    "auto_compress",
    "sensitivity",
    "apply_initial_masks",
    "callbacks",
    "constraints",
    "controllers",
    "criteria",
    "distributions",
    "export",
    "gate",
    "gates",
    "initializers",
    "regularizers",
    "slimming",
    "layers",
    "load_exported",
    "methods",
    "metrics",
    "ops",
    "optimizers",
    "patterns",
    "prune",
    "calibrate",
    "quantize",
    "quantizers",
    "prune_at_init",
    "report",
    "schedules",
    "scorers",
    "strip",
    "testing",
]

# Real savings: structured shrinking, column sampling, low-rank factors.
from keras_sparse.column_sampling import sample_columns  # noqa: E402
from keras_sparse.factorize import factorize  # noqa: E402
from keras_sparse.shrink import ShrinkInfo  # noqa: E402
from keras_sparse.shrink import prune_channels  # noqa: E402
from keras_sparse.shrink import prune_heads  # noqa: E402
from keras_sparse.shrink import shrink  # noqa: E402

__all__ += ["ShrinkInfo", "factorize", "prune_channels", "prune_heads", "sample_columns", "shrink"]
