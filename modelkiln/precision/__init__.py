"""Reduced precision with evidence: names, options, budgets, evaluation and the auto search.

Importing this package loads only its leaves (names, budget, options), which targets and
backends declare against; the pipeline imports `modelkiln.precision.build` itself.
"""

from modelkiln.precision.budget import Budget
from modelkiln.precision.names import AUTO, CHOICES, Precision
from modelkiln.precision.options import PrecisionOptions

__all__ = ["AUTO", "CHOICES", "Budget", "Precision", "PrecisionOptions"]
