"""Shared fixtures: an isolated clusterjupyter home and a real IPython shell with the extension."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from shells import new_shell  # noqa: E402  (tests/ must be on sys.path first)


@pytest.fixture
def cj_home(tmp_path, monkeypatch):
    """A fresh CLUSTERJUPYTER_HOME (config, secret, journal, local work root) for one test."""
    home = tmp_path / "cjhome"
    monkeypatch.setenv("CLUSTERJUPYTER_HOME", str(home))
    return home


def _settings() -> dict:
    """The process-wide settings a cell (or a job's cell, brought back) can change."""
    import copy
    import warnings

    saved: dict = {"env": dict(os.environ), "path": list(sys.path), "cwd": os.getcwd(),
                   "warnings": list(warnings.filters)}
    if "matplotlib" in sys.modules:
        import matplotlib

        rc = matplotlib.rcParams
        # raw values: reading rcParams["backend"] would resolve an automatic backend
        saved["rc"] = {k: copy.deepcopy(dict.__getitem__(rc, k)) for k in dict.keys(rc)
                       if k != "backend"}
        saved["backend"] = rc._get_backend_or_none()
    if "matplotlib_inline.config" in sys.modules:
        from matplotlib_inline.config import InlineBackend

        if InlineBackend.initialized():
            inline = InlineBackend.instance()
            saved["inline"] = {k: copy.deepcopy(getattr(inline, k))
                               for k in inline.trait_names(config=True)}
    if "numpy" in sys.modules:
        saved["numpy"] = sys.modules["numpy"].get_printoptions()
    if "pandas" in sys.modules:
        saved["pandas"] = True
    return saved


def _restore(saved: dict) -> None:
    """Put back what :func:`_settings` saw, so no test's settings reach the next test."""
    import warnings

    os.chdir(saved["cwd"])
    os.environ.clear()
    os.environ.update(saved["env"])
    sys.path[:] = saved["path"]
    warnings.filters[:] = saved["warnings"]
    if "matplotlib" in sys.modules:
        import matplotlib

        rc = matplotlib.rcParams
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if "rc" not in saved:
                matplotlib.rcdefaults()
            else:
                dict.update(rc, saved["rc"])
            backend = saved.get("backend")
            if backend is None:
                if "matplotlib.pyplot" in sys.modules:
                    sys.modules["matplotlib.pyplot"].close("all")
                dict.__setitem__(rc, "backend", matplotlib.rcsetup._auto_backend_sentinel)
            elif rc._get_backend_or_none() != backend:
                matplotlib.use(backend)
    if "matplotlib_inline.config" in sys.modules:
        from matplotlib_inline.config import InlineBackend

        if "inline" in saved and InlineBackend.initialized():
            for k, v in saved["inline"].items():
                setattr(InlineBackend.instance(), k, v)
        elif "inline" not in saved:
            InlineBackend.clear_instance()
    if "numpy" in saved:
        sys.modules["numpy"].set_printoptions(**saved["numpy"])
    if "pandas" in sys.modules:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sys.modules["pandas"].reset_option("all")


@pytest.fixture(autouse=True, scope="module")
def _module_settings():
    """Every test module leaves the process-wide settings as it found them, whatever its
    module-scoped shells did (a job's settings become the kernel's, and
    :func:`kernel_settings` covers one test at a time): no file's tests depend on which files
    ran before them."""
    saved = _settings()
    yield
    _restore(saved)


@pytest.fixture
def kernel_settings():
    """The process-wide settings a cell (or a job's cell, brought back) changes are put back
    after the test: for every test that runs cells, whichever fixture made its shell."""
    saved = _settings()
    yield
    _restore(saved)


@pytest.fixture
def shell(cj_home, kernel_settings):
    sh = new_shell()
    yield sh
    from IPython.core.interactiveshell import InteractiveShell

    InteractiveShell.clear_instance()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """IPython registers ``atexit_operations`` for every InteractiveShell it makes, and each one
    runs a full ``gc.collect()`` when the process exits: with the hundreds of shells the tests
    make, the test process took minutes to exit after its summary (measured under load). The
    tests' shells keep nothing worth saving at exit, so their exit work is dropped here."""
    import atexit
    import gc

    module = sys.modules.get("IPython.core.interactiveshell")
    if module is None:
        return
    for obj in gc.get_objects():
        if isinstance(obj, module.InteractiveShell):
            atexit.unregister(obj.atexit_operations)
