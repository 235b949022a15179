"""jaxlmm: linear mixed models in JAX, from one lme4-style fit to batched genome-wide variant scans."""

from .differentiable import (DifferentiableFit, differentiable_fit, differentiable_fit_spectral, group_kernel,
                             mix_kernels)
from .fit import FitResult, fit
from .lmer import lmer
from .mixed import MixedFit
from .scan import ScanResult, scan
from .structure import RandomTerm, general_term, group_term, kinship_term
from .validate import InputError

__all__ = [
    "DifferentiableFit", "FitResult", "InputError", "MixedFit", "RandomTerm", "ScanResult", "differentiable_fit",
    "differentiable_fit_spectral", "fit", "general_term", "group_kernel", "group_term", "kinship_term", "lmer",
    "mix_kernels", "scan",
]
