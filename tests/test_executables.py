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


def test_nothing_is_kept_without_a_folder(tmp_path):
    x, y = jnp.ones(3), jnp.asarray(1.0)
    program = executables.compiled(_program, "program", (x, y), {"power": 1})
    assert float(program(x, y)) == 3.0
    assert not list(tmp_path.iterdir())
