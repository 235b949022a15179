"""Several processes (or machines) on JAX's own multi-process runtime, ``jax.distributed``.

Each of the P processes scans share ``process_index + 1`` of P (contiguous chunks, as ``--part``) on its local
devices and writes its part; after a barrier, process 0 joins the parts (:func:`jaxlmm.merge.merge_parts`) into one
table byte-identical to a one-process run, removes them, and a last barrier lets every process finish together.
The inputs are the same for every process, so a bad input fails in all of them before the first barrier.

CPU processes need cross-process collectives for the barriers; this module selects gloo
(``jax_cpu_collectives_implementation``) in the CLI process, which is its own program (library users calling
:func:`run_distributed` get the same setting, stated here).
"""

from __future__ import annotations

import os

from .config import ScanConfig
from .merge import merge_parts, part_paths
from .pipeline import run_scan


def run_distributed(config: ScanConfig, on_chunk=None) -> list:
    import jax
    from jax.experimental import multihost_utils

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=config.coordinator, num_processes=config.num_processes,
                               process_id=config.process_id)
    try:
        index, count = jax.process_index(), jax.process_count()
        lines = [f"process {index + 1} of {count} (jax.distributed)"]
        lines += run_scan(config._replace(part=f"{index + 1}/{count}", distributed=False), on_chunk)
        multihost_utils.sync_global_devices("jaxlmm: parts written")
        if index == 0:
            parts = part_paths(config.out)
            lines += merge_parts(config.out)
            for path in parts:
                os.remove(path)
        multihost_utils.sync_global_devices("jaxlmm: merged")
        return lines
    finally:
        jax.distributed.shutdown()
