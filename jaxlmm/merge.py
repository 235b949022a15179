"""Joining the shares of a partitioned scan (``jaxlmm scan --part i/n``) into one table.

Share i of n covers a contiguous range of variants whose edges fall on chunk boundaries, so each variant is fitted
in the same chunk as in a whole run and the joined table is byte-identical to a one-process run's.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import tempfile

from .io.results import HEADER, genomic_inflation, read_table
from .validate import InputError

_PART = re.compile(r"\.part(\d+)of(\d+)\.assoc\.tsv$")


def part_paths(prefix: str) -> list:
    """Paths of all n shares of ``prefix``, in order; an error names the missing or unfinished ones."""
    found = {}
    for path in glob.glob(glob.escape(prefix) + ".part*of*.assoc.tsv"):
        match = _PART.search(path)
        if match:
            found.setdefault(int(match.group(2)), {})[int(match.group(1))] = path
    if not found:
        raise InputError(f"no parts {prefix}.part<i>of<n>.assoc.tsv to merge")
    if len(found) > 1:
        raise InputError(f"parts of different splits ({', '.join(f'n = {n}' for n in sorted(found))}) share the "
                         f"prefix {prefix}")
    (n, parts), = found.items()
    missing = [i for i in range(1, n + 1) if i not in parts]
    if missing:
        unfinished = [i for i in missing if os.path.exists(f"{prefix}.part{i}of{n}.assoc.tsv.partial")]
        raise InputError(f"{prefix}: parts {missing} of {n} are missing"
                         + (f" (parts {unfinished} are unfinished: rerun them with --resume)" if unfinished else ""))
    return [parts[i] for i in range(1, n + 1)]


def merge_parts(prefix: str) -> list:
    """Concatenate the shares into ``prefix.assoc.tsv`` (atomically) and write ``prefix.log.txt``; returns log
    lines."""
    paths = part_paths(prefix)
    target = prefix + ".assoc.tsv"
    directory = os.path.dirname(os.path.abspath(target))
    with tempfile.NamedTemporaryFile("wb", dir=directory, delete=False, suffix=".tmp") as out:
        out.write(HEADER.encode())
        for path in paths:
            with open(path, "rb") as part:
                if part.readline() != HEADER.encode():
                    raise InputError(f"{path}: not a jaxlmm association table (header differs)")
                shutil.copyfileobj(part, out)
    os.replace(out.name, target)
    results = read_table(target)
    ok = results["status"] == "ok"
    lines = [f"jaxlmm merge: {len(paths)} parts -> {target}",
             *(f"  {path}" for path in paths),
             f"rows out: {len(results)}; " + ", ".join(
                 f"{s}: {c}" for s, c in results["status"].value_counts().sort_index().items()),
             f"genomic inflation lambda_GC (p_wald): {genomic_inflation(results['p_wald'][ok].to_numpy()):.4f}"]
    with open(prefix + ".log.txt", "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return lines
