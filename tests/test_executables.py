"""jaxlmm.executables: compiled programs kept on disk, reused without tracing, keyed by everything they depend on."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxlmm import executables

traces = []


@partial(jax.jit, static_argnames=("power",))
def _program(x, y, *, power):
    traces.append(power)  # runs while tracing only
    return jnp.sum(x**power) * y


def test_kept_executables_are_reused_without_tracing(tmp_path):
    x, y = jnp.arange(6.0).reshape(2, 3), jnp.asarray(2.0)
    expected = float(np.sum(np.asarray(x) ** 2) * 2.0)
    traces.clear()
    with executables.kept_in(tmp_path):
        first = executables.compiled(_program, "program", (x, y), {"power": 2})
        assert float(first(x, y)) == expected and traces == [2]
        jax.clear_caches()  # as in a new process: tracing again would run the Python function
        again = executables.compiled(_program, "program", (x, y), {"power": 2})
        assert float(again(x, y)) == expected and traces == [2]  # loaded: not traced again
        executables.compiled(_program, "program", (x, y), {"power": 3})  # other static argument: other program
        executables.compiled(_program, "program", (x[:1], y), {"power": 2})  # other shape: other program
    assert traces == [2, 3, 2]
    kept = sorted(tmp_path.glob("program-*.pickle"))
    assert len(kept) == 3
    kept[0].write_bytes(b"not an executable")  # unreadable: compiled again and replaced
    with executables.kept_in(tmp_path):
        for args in ((x, y), (x[:1], y)):
            for power in (2, 3):
                assert np.isclose(float(executables.compiled(_program, "program", args, {"power": power})(*args)),
                                  float(np.sum(np.asarray(args[0]) ** power) * 2.0))
    assert all(path.read_bytes() != b"not an executable" for path in tmp_path.glob("program-*.pickle"))


def test_a_program_loaded_ahead_is_the_one_compiled_returns(tmp_path):
    x, y = jnp.arange(6.0).reshape(2, 3), jnp.asarray(2.0)
    like = tuple(jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding, weak_type=a.weak_type) for a in (x, y))
    with executables.kept_in(tmp_path):
        assert not executables.preload("program", like, {"power": 2})  # nothing kept yet
        executables.compiled(_program, "program", (x, y), {"power": 2})
        assert executables.preload("program", like, {"power": 2})
        assert not executables.preload("program", like, {"power": 5})  # another program: not kept
        traces.clear()
        jax.clear_caches()
        program = executables.compiled(_program, "program", (x, y), {"power": 2})
        assert not executables._PRELOADED and traces == []  # the loaded one taken, nothing traced
        assert float(program(x, y)) == float(np.sum(np.asarray(x) ** 2) * 2.0)
        assert executables.preload("program", like, {"power": 2})  # a guess never taken ...
    assert not executables._PRELOADED  # ... is dropped with the folder


def test_nothing_is_kept_without_a_folder(tmp_path):
    x, y = jnp.ones(3), jnp.asarray(1.0)
    program = executables.compiled(_program, "program", (x, y), {"power": 1})
    assert float(program(x, y)) == 3.0
    assert not list(tmp_path.iterdir())


_SCRIPT = """
import sys
import jax, jax.numpy as jnp
from jaxlmm import executables
jax.config.update("jax_compilation_cache_dir", sys.argv[1])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
x, y = jnp.linspace(0.0, 1.0, 7), jnp.asarray(0.5)  # JAX settles here whether its cache is used
def loop(x, y):
    def body(carry):
        i, v = carry
        return i + 1, jnp.where(v > y, jnp.sin(v) * y, jnp.cos(v)) + i
    return jax.lax.while_loop(lambda carry: carry[0] < 3, body, (0, x))[1].sum()
with executables.kept_in(sys.argv[2]):
    print(float(executables.compiled(jax.jit(loop), "program", (x, y), {})(x, y)))
"""


def test_kept_even_when_jax_has_the_program_cached(tmp_path):
    """A program already in JAX's persistent cache is kept all the same (compiled afresh): an executable that JAX
    loaded from its cache would serialize without its kernels on XLA:CPU. Here the second folder stands for a new
    key (an edited jaxlmm source file) over an unchanged program."""
    import subprocess
    import sys

    def run(folder):
        done = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path / "jax"), str(tmp_path / folder)],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return float(done.stdout)

    expected = run("first")
    assert len(list((tmp_path / "first").glob("program-*.pickle"))) == 1
    assert run("second") == expected
    assert len(list((tmp_path / "second").glob("program-*.pickle"))) == 1
    assert run("second") == expected  # the kept one, loaded


def test_least_recently_used_executables_are_removed_beyond_the_limit(tmp_path, monkeypatch):
    """With room for two programs of a name, a third removes the one used least recently (loading counts as use);
    programs of other names are not touched."""
    import os
    import time

    monkeypatch.setattr(executables, "KEPT_PER_PROGRAM", 2)
    x, y = jnp.ones(3), jnp.asarray(1.0)
    with executables.kept_in(tmp_path):
        for power in (1, 2):
            executables.compiled(_program, "program", (x, y), {"power": power})
        executables.compiled(_program, "other", (x, y), {"power": 1})
        first, second = (tmp_path / f"program-{executables._key('program', (x, y), {'power': power})}.pickle"
                         for power in (1, 2))
        past = time.time() - 100
        os.utime(first, (past, past))
        os.utime(second, (past - 50, past - 50))  # the second is now the older one ...
        executables.compiled(_program, "program", (x, y), {"power": 1})  # ... and the first is used again
        executables.compiled(_program, "program", (x, y), {"power": 3})
    kept = set(tmp_path.glob("program-*.pickle"))
    assert len(kept) == 2 and first in kept and second not in kept
    assert len(list(tmp_path.glob("other-*.pickle"))) == 1
