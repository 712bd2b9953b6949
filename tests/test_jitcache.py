"""The compiled kernels' disk cache is keyed by every kernel file of the package, so that
editing a kernel that another file's kernel calls recompiles the caller too."""

from __future__ import annotations

from mugpt.model import jitcache


def test_the_stamp_lists_every_kernel_file_and_nothing_else() -> None:
    stamp = jitcache.package_stamp()
    paths = {path for path, _, _ in stamp}
    for kernel_file in ("engine/loop.py", "model/fast.py", "mechanisms/cache.py"):
        assert kernel_file in paths
    assert "serve/app.py" not in paths and "cli/run.py" not in paths
    for path, mtime, size in stamp:
        st = (jitcache.PACKAGE / path).stat()
        assert (mtime, size) == (st.st_mtime, st.st_size)
        assert jitcache.MARKER in (jitcache.PACKAGE / path).read_bytes()


def test_kernels_of_the_package_use_the_package_stamp() -> None:
    from mugpt.engine.loop import compiled_steps
    from mugpt.mechanisms.cache import key_dots

    assert jitcache.REGISTERED
    for kernel in (key_dots, compiled_steps):
        locator = kernel._cache._impl.locator
        assert type(locator).__name__.startswith("Package")
        assert locator.get_source_stamp() == ("mugpt", jitcache.package_stamp())


def test_kernels_outside_the_package_keep_numba_s_own_stamp(tmp_path) -> None:
    import importlib.util

    source = tmp_path / "outside.py"
    source.write_text("from numba import njit\n\n@njit(cache=True)\ndef one():\n    return 1\n")
    spec = importlib.util.spec_from_file_location("outside_kernels", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    locator = module.one._cache._impl.locator
    assert not type(locator).__name__.startswith("Package")
    assert module.one() == 1
