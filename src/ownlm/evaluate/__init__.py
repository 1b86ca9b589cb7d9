"""LaMP metrics (same numbers as the official script), trivial references, reports."""

from ownlm.evaluate.report import (
    MethodResult,
    NotRun,
    not_run_message,
    plot_buckets,
    plot_methods,
    print_table,
    write_json,
    write_lamp_predictions,
)
from ownlm.scores.metrics import (
    LOWER_IS_BETTER,
    classification_metrics,
    compute_metrics,
    generation_metrics,
    per_user_metrics,
    rating_metrics,
)
from ownlm.scores.references import population_majority, reference_predictions, user_majority

__all__ = [
    "LOWER_IS_BETTER",
    "MethodResult",
    "NotRun",
    "classification_metrics",
    "compute_metrics",
    "generation_metrics",
    "not_run_message",
    "per_user_metrics",
    "plot_buckets",
    "plot_methods",
    "population_majority",
    "print_table",
    "rating_metrics",
    "reference_predictions",
    "user_majority",
    "write_json",
    "write_lamp_predictions",
]
