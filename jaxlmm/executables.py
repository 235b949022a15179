"""Compiled scan programs kept on disk between runs, so a warm run skips tracing and lowering as well as compiling.

JAX's persistent compilation cache skips XLA's compilation, but every process still traces and lowers each program
to find it there: 0.4 s for the scan's chunk fit on mouse HS1940, a tenth of the whole run. :func:`compiled` keeps
the executable itself (``jax.experimental.serialize_executable``), under a key naming everything it depends on:
the program's name and static arguments, the shapes, dtypes and shardings of its array arguments, the versions of
jax and jaxlib, the backend and device kind, ``XLA_FLAGS``, and a hash of jaxlmm's own source files (so an edited
or upgraded jaxlmm never runs an old program). A file that cannot be read back is replaced.

At most :data:`KEPT_PER_PROGRAM` executables are kept per program name (a fit_chunk program is ~2 MB), the least
recently used removed first, so an upgraded jaxlmm or many datasets of other sizes do not grow the folder without
bound.

Nothing is kept unless a folder is given (:func:`kept_in`); the command line gives one (beside JAX's cache), the
library by default does not: importing jaxlmm changes no setting. Multi-process runs (``jax.distributed``) and
chunks sharded over several devices are not kept.

Loading a kept program takes time too (0.2 s for mouse HS1940's chunk fit, on one core, without Python's GIL), so a
caller that can predict a program's arguments before it has them starts the load early (:func:`preload`) and does
other work meanwhile; :func:`compiled` then takes the loaded program.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import os
import pickle
import threading
from concurrent.futures import Future
from pathlib import Path

import jax

from .io.kept_files import keep_recent, write_whole

KEPT_PER_PROGRAM = 16
_FOLDER: contextvars.ContextVar = contextvars.ContextVar("jaxlmm_executables", default=None)
_PRELOADED: dict[Path, Future] = {}  # kept executables being loaded ahead of their use (see preload)


@contextlib.contextmanager
def kept_in(folder):
    """Within this context, :func:`compiled` keeps and reuses executables in ``folder`` (None: not at all)."""
    token = _FOLDER.set(None if folder is None else str(folder))
    try:
        yield
    finally:
        _FOLDER.reset(token)
        _PRELOADED.clear()  # loads that were never asked for (a wrong prediction)


def preload(name: str, args_like: tuple, static: dict) -> bool:
    """Start loading, in a background thread, the kept executable that :func:`compiled` would return for arguments
    like ``args_like``: numpy arrays and ``jax.ShapeDtypeStruct`` stand-ins for device arrays, with the shardings
    the real ones will have. Returns whether one is kept (and now loading). A later :func:`compiled` call with
    matching arguments takes it (waiting for the load to finish); a prediction that does not come true costs only
    the load. Call from the thread that calls :func:`compiled`."""
    folder = _FOLDER.get()
    if folder is None or jax.process_count() > 1:
        return False
    path = _path(folder, name, args_like, static)
    if path in _PRELOADED:
        return True
    if not path.exists():
        return False
    future: Future = Future()
    _PRELOADED[path] = future
    threading.Thread(target=lambda: future.set_result(_loaded(path)), daemon=True,
                     name=f"jaxlmm-preload-{name}").start()
    return True


def compiled(jitted, name: str, args: tuple, static: dict):
    """A callable running ``jitted(*args, **static)`` for arguments shaped like ``args`` (called with the arrays
    only): the kept executable when there is one, else compiled now (and kept when a folder is set), else, with no
    folder, the jitted function itself (JAX traces it on the first call as usual)."""
    folder = _FOLDER.get()
    if folder is None or jax.process_count() > 1:  # a multi-process run places programs on its own devices
        return functools.partial(jitted, **static)
    path = _path(folder, name, args, static)
    pending = _PRELOADED.pop(path, None)
    loaded = _loaded(path) if pending is None else pending.result()
    if loaded is not None:
        return loaded
    from jax.experimental import serialize_executable

    executable = _compiled_afresh(jitted.trace(*args, **static).lower())
    try:  # keep it only if it round-trips: same outputs from the reloaded copy
        payload = serialize_executable.serialize(executable)
        reloaded = serialize_executable.deserialize_and_load(*payload)
        if _same(reloaded(*args), executable(*args)):
            path.parent.mkdir(parents=True, exist_ok=True)
            write_whole(path, lambda handle: pickle.dump(payload, handle))
            keep_recent(path.parent, f"{name}-*.pickle", KEPT_PER_PROGRAM)
    except Exception:  # noqa: BLE001  keeping it is an optimization; the run goes on without
        pass
    return executable


def _path(folder, name: str, args: tuple, static: dict) -> Path:
    return Path(folder) / f"{name}-{_key(name, args, static)}.pickle"


def _loaded(path: Path):
    """The executable kept at path, or None (absent, unreadable or made by another build: compiled again)."""
    from jax.experimental import serialize_executable

    try:
        with open(path, "rb") as handle:
            loaded = serialize_executable.deserialize_and_load(*pickle.load(handle))
        os.utime(path)  # its last use, for eviction
        return loaded
    except Exception:  # noqa: BLE001
        return None


def _compiled_afresh(lowered):
    """``lowered.compile()`` bypassing JAX's persistent compilation cache: on XLA:CPU (jaxlib 0.10) an executable
    that JAX loaded from its cache serializes without its kernels (a reloaded copy fails with ``NOT_FOUND: Function
    ... not found``). JAX decides once per process whether its cache is used, so turning the option off is not
    enough: the cache is reset before (it then reads the option again) and after (it comes back as configured)."""
    from jax.experimental.compilation_cache import compilation_cache

    previous = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()
    try:
        return lowered.compile()
    finally:
        jax.config.update("jax_enable_compilation_cache", previous)
        compilation_cache.reset_cache()


def _same(a, b) -> bool:
    import numpy as np

    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b))
    return all(np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True) for x, y in pairs)


def _key(name, args, static) -> str:
    leaves, tree = jax.tree.flatten(args)
    described = [(getattr(a, "shape", None), str(getattr(a, "dtype", type(a))), getattr(a, "weak_type", None),
                  str(getattr(a, "sharding", None))) for a in leaves]
    device = jax.devices()[0]
    parts = (name, sorted((k, repr(v)) for k, v in static.items()), str(tree), described, jax.__version__,
             _jaxlib_version(), device.platform, getattr(device, "device_kind", ""), os.environ.get("XLA_FLAGS", ""),
             _source_hash())
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]


def _jaxlib_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("jaxlib")
    except PackageNotFoundError:
        return ""


@functools.lru_cache(maxsize=1)
def _source_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()
