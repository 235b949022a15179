"""jaxlmm: linear mixed models in JAX, from one lme4-style fit to batched genome-wide variant scans."""

from .fit import FitResult, fit
from .lmer import lmer
from .mixed import MixedFit
from .scan import ScanResult, scan
from .structure import RandomTerm, general_term, group_term, kinship_term
from .validate import InputError

__all__ = [
    "FitResult", "InputError", "MixedFit", "RandomTerm", "ScanResult", "fit", "general_term", "group_term",
    "kinship_term", "lmer", "scan",
]
