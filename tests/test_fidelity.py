"""A %%cluster cell behaves as the same cell in the kernel: magics, kernel settings, identity,
figures and their order, errors. Real IPython shells on the local backend (and a real kernel)."""

from __future__ import annotations

import json
import os
import re
import sys
import warnings

import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

from clusterjupyter import api
from clusterjupyter.jobdir import JobPaths

from shells import ok, run


def plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def job_pid() -> int:
    rec = api.list_jobs(limit=1)[0]
    return json.loads(open(JobPaths.from_dir(rec.job_dir).started).read())["pid"]


# -- magics inside a %%cluster cell --------------------------------------------------------------

def test_time_magic_reads_its_names_and_prints_the_timing(shell):
    ok(shell, "import math")
    with capture_output() as cap:
        ok(shell, "%%cluster\n%time y = math.sqrt(2)\nimport os\nwhere = os.getpid()")
    assert shell.user_ns["y"] == pytest.approx(2 ** 0.5)
    assert "Wall time" in cap.stdout
    assert shell.user_ns["where"] == job_pid() != os.getpid()


def test_timeit_and_cell_time_magics(shell):
    ok(shell, "def f(v):\n    return v * 2\nx = 21")
    with capture_output() as cap:
        ok(shell, "%%cluster\n%timeit -n 3 -r 2 f(x)\nz = f(x)")
    assert "loops each" in cap.stdout and shell.user_ns["z"] == 42
    with capture_output() as cap:
        ok(shell, "%%cluster\n%%time\nw = f(x) + 1")
    assert "Wall time" in cap.stdout and shell.user_ns["w"] == 43


def test_shell_escape_output_is_the_kernels(shell):
    with capture_output() as cap:
        ok(shell, "%%cluster\n!echo hi")
    assert cap.stdout == "hi\r\n"  # a pseudo-terminal, as IPython's system() in the kernel
    ok(shell, "name = 'there'")
    with capture_output() as cap:
        ok(shell, "%%cluster\n!echo hello {name}\nout = !echo $name")
    assert cap.stdout == "hello there\r\n" and list(shell.user_ns["out"]) == ["there"]


def test_env_and_cd_act_in_the_job_and_leave_the_kernel_as_the_cell_would(shell, tmp_path,
                                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    monkeypatch.delenv("CJ_FID_VAR", raising=False)
    ok(shell, f"target = {str(tmp_path / 'sub')!r}")
    with capture_output() as cap:
        ok(shell, "%%cluster\n%env CJ_FID_VAR=set-in-job\n%cd $target\nimport os\n"
                  "seen = (os.environ['CJ_FID_VAR'], os.getcwd(), os.getpid())")
    value, cwd, pid = shell.user_ns["seen"]
    assert value == "set-in-job" and cwd == str(tmp_path / "sub") and pid != os.getpid()
    assert os.environ["CJ_FID_VAR"] == "set-in-job" and os.getcwd() == str(tmp_path / "sub")
    assert "env: CJ_FID_VAR=set-in-job" in cap.stdout


def test_a_magic_a_job_cannot_run_is_refused_by_name_before_submission(shell):
    r = run(shell, "%%cluster\nx = 1\n%rerun\ny = 2")
    assert isinstance(r.error_in_exec, UsageError) and "%rerun" in str(r.error_in_exec)
    assert api.list_jobs() == [] and "x" not in shell.user_ns


def test_a_missing_extension_fails_in_the_job_as_in_the_kernel(shell):
    with capture_output() as cap:
        r = run(shell, "%%cluster\nimport os\npid = os.getpid()\n"
                       "%reload_ext no_such_extension_cj\n%no_such_magic_cj numpy")
    assert type(r.error_in_exec) is ModuleNotFoundError
    assert "No module named 'no_such_extension_cj'" in plain(cap.stdout)
    assert shell.user_ns["pid"] == job_pid() != os.getpid()  # the lines before it ran there
    assert "clusterjupyter" not in cap.stderr  # a failed %reload_ext is not replayed here
    assert "no_such_extension_cj" not in shell.extension_manager.loaded


def test_an_unknown_magic_raises_the_kernels_usage_error_where_the_kernel_would(shell):
    with capture_output() as cap:
        r = run(shell, "%%cluster\nimport os\npid = os.getpid()\n%no_such_magic_cj 1\nz = 1")
    assert isinstance(r.error_in_exec, UsageError)
    assert "UsageError: Line magic function `%no_such_magic_cj` not found." in cap.stderr
    assert shell.user_ns["pid"] == job_pid() != os.getpid() and "z" not in shell.user_ns


EXTENSION = """import os

def load_ipython_extension(ip):
    ip.register_magic_function(lambda line: (os.getpid(), line), 'line', 'cj_where')
"""


def test_an_extension_loaded_in_the_job_serves_the_cell_and_is_loaded_here_after(
        shell, tmp_path, monkeypatch):
    (tmp_path / "cj_fid_ext.py").write_text(EXTENSION)
    monkeypatch.syspath_prepend(str(tmp_path))
    ok(shell, "%%cluster\n%load_ext cj_fid_ext\nwhere = %cj_where numpy")
    pid, line = shell.user_ns["where"]
    assert pid == job_pid() != os.getpid() and line == "numpy"
    assert "cj_fid_ext" in shell.extension_manager.loaded  # as the cell leaves the kernel
    assert ok(shell, "%cj_where here") == (os.getpid(), "here")


# -- errors ---------------------------------------------------------------------------------------

def test_syntax_error_is_the_kernels_and_submits_nothing(shell):
    with capture_output() as cap:
        r = run(shell, "%%cluster\nx = (1,")
    assert type(r.error_in_exec) is SyntaxError
    assert "run_cell_magic" not in cap.stdout and "SyntaxError" in plain(cap.stdout)
    for cell in ("return 5", "for i in x:\n    pass\nbreak", "yield 1"):
        r = run(shell, f"%%cluster\n{cell}")
        assert type(r.error_in_exec) is SyntaxError
    assert api.list_jobs() == []


def test_top_level_await_runs_in_the_job(shell):
    value = ok(shell, "%%cluster\nimport asyncio, os\nawait asyncio.sleep(0.01)\n"
                      "pid = os.getpid()\nawait asyncio.sleep(0, result=7)")
    assert value == 7 and shell.user_ns["pid"] == job_pid() != os.getpid()


def test_traceback_starts_at_the_cell_and_shows_earlier_cells(shell):
    ok(shell, "def f(x):\n    y = x + 1\n    return y / 0")
    with capture_output() as cap:
        r = run(shell, "%%cluster\na = 1\nf(a)")
    assert isinstance(r.error_in_exec, ZeroDivisionError)
    text = plain(cap.stdout)
    assert "run_cell_magic" not in text and "magics.py" not in text
    assert "Cell In[2], line 2" in text and "----> 2 f(a)" in text
    assert "Cell In[1], line 3, in f(x)" in text and "return y / 0" in text


def test_warnings_name_the_cell_as_the_kernel_does(shell):
    with capture_output() as cap:
        ok(shell, "%%cluster\nimport warnings\nwarnings.warn('careful')")
    name = next(n for n, c in shell.compile._filename_map.items() if c == 1
                and n in cap.stderr)
    assert f"{name}:2: UserWarning: careful" in cap.stderr


# -- figures ---------------------------------------------------------------------------------------

def test_figures_show_after_the_value_and_empty_figures_show_no_image(shell):
    pytest.importorskip("matplotlib")
    with capture_output() as cap:
        r = run(shell, "%%cluster\nimport matplotlib.pyplot as plt\nplt.plot([1, 2])")
    assert r.success and "Line2D" in cap.stdout
    assert [sorted(o.data) for o in cap.outputs] == [["image/png", "text/plain"]]
    with capture_output() as cap:
        ok(shell, "%%cluster\nfig = plt.figure()")
    assert [o.data for o in cap.outputs] == [{"text/plain": "<Figure size 640x480 with 0 Axes>"}]
    with capture_output() as cap:
        ok(shell, "%%cluster\nplt.plot([1, 2])\nplt.show()\nprint('after')")
    assert len(cap.outputs) == 1 and "Figure(" not in cap.stdout and "after" in cap.stdout


def test_inline_figure_format_set_in_the_cell(shell):
    pytest.importorskip("matplotlib")
    with capture_output() as cap:
        ok(shell, "%%cluster\n%config InlineBackend.figure_format = 'svg'\n"
                  "import matplotlib.pyplot as plt\nplt.plot([1, 2]);")
    assert [sorted(o.data) for o in cap.outputs] == [["image/svg+xml", "text/plain"]]
    with capture_output() as cap:
        ok(shell, "%%cluster\n%config InlineBackend.figure_format = 'retina'\n"
                  "import matplotlib.pyplot as plt\nplt.plot([1, 2]);")
    (out,) = cap.outputs
    assert out.metadata["image/png"]["width"] > 100


def outputs(cap) -> tuple[str, list]:
    """What a cell showed: its stdout (addresses blanked) and each display's mime types."""
    text = re.sub(r" at 0x[0-9a-f]+", "", plain(cap.stdout))
    return text, [sorted(o.data) for o in cap.outputs]


def inline(shell) -> None:
    """``%matplotlib inline`` on this shell as in a new kernel: an IPython kernel's
    ``enable_gui`` has no event loop to start for it (a plain InteractiveShell's raises), and
    the inline backend (its figure formats) and pyplot (its post-execute draw) connect to one
    shell per process, once: this shell is a new one."""
    backend_inline = pytest.importorskip("matplotlib_inline.backend_inline")
    backend_inline.configure_inline_support.current_backend = "unset"
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        plt._REPL_DISPLAYHOOK = plt._ReplDisplayHook.NONE
    shell.enable_gui = lambda gui=None: None
    ok(shell, "%matplotlib inline")


BAD_FIGURE = ("import os, matplotlib.pyplot as plt\nfig, ax = plt.subplots()\n"
              "ax.set_title(r'$\\frac{$')\npid = os.getpid()")


def test_a_figure_that_does_not_render_fails_as_the_kernels_inline_backend(shell):
    inline(shell)
    with capture_output() as here:
        ok(shell, BAD_FIGURE)   # the cell succeeds; the post-execute draw reports the error
    with capture_output() as there:
        ok(shell, "%%cluster\n" + BAD_FIGURE)
    assert shell.user_ns["pid"] == job_pid() != os.getpid()
    text, shown = outputs(there)
    assert "Error in callback <function _draw_all_if_interactive> (for post_execute)" in text
    assert "ValueError" in text and "clusterjupyter" not in there.stderr
    assert (text, shown) == outputs(here) and shown == [["text/plain"]]
    assert ok(shell, "plt.get_fignums()") == []   # shown and closed by the kernel, as here


def test_figures_a_job_leaves_open_join_the_kernels_pyplot(shell):
    inline(shell)
    cells = ["%%cluster\nimport matplotlib, os\nmatplotlib.use('svg')\n"
             "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nopened_in = os.getpid()",
             "%%cluster\n%matplotlib inline\nimport matplotlib.pyplot as plt",
             "%%cluster\nplt.figure()\nplt.plot([3, 1]);"]
    with capture_output() as cap:
        ok(shell, cells[0])   # a file-only backend shows nothing; the figure stays open
    assert outputs(cap)[1] == [] and shell.user_ns["opened_in"] == job_pid() != os.getpid()
    fig = ok(shell, "plt.gcf()")
    assert ok(shell, "plt.get_fignums()") == [1] and fig.axes[0].lines[0].get_ydata()[1] == 2
    ok(shell, cells[1])
    with capture_output() as cap:
        ok(shell, cells[2])   # a cell that draws: the kernel's open figure shows first
    assert outputs(cap)[1] == [["image/png", "text/plain"]] * 2
    assert ok(shell, "plt.get_fignums()") == []


def test_no_warning_leaks_from_the_machinery(shell):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ok(shell, "%%cluster\nq = 1")
    assert shell.user_ns["q"] == 1


# -- identity ----------------------------------------------------------------------------------

def test_names_for_one_object_are_one_object_in_the_job_and_back(shell):
    ok(shell, "x = [1]\ny = x\nbox = {'items': x}")
    ok(shell, "%%cluster\nx.append(2)\nsame = (x is y, box['items'] is x)\nnew = [0]\nalias = new\n"
              "also = y")
    ns = shell.user_ns
    assert ns["same"] == (True, True)
    assert ns["x"] == [1, 2] and ns["y"] is ns["x"] and ns["box"]["items"] is ns["x"]
    assert ns["alias"] is ns["new"] and ns["also"] is ns["x"]


def test_mutations_are_written_into_the_kernels_objects(shell):
    ok(shell, "class P:\n    def __init__(self):\n        self.v = 0\n"
              "d = {'k': 1}\nd2 = d\ns = {1}\ns2 = s\np = P()\nq = p\n"
              "import os\nhere = os.getpid()")
    ok(shell, "%%cluster\nd['j'] = 2\ns.add(2)\np.v = 5\nimport os\nthere = os.getpid()")
    ns = shell.user_ns
    assert ns["d2"] == {"k": 1, "j": 2} and ns["d2"] is ns["d"]
    assert ns["s2"] == {1, 2} and ns["q"].v == 5 and ns["q"] is ns["p"]
    assert ns["there"] != ns["here"]


def test_objects_inside_containers_stay_shared_after_write_back(shell):
    pytest.importorskip("pandas")
    ok(shell, "import numpy as np, pandas as pd, os\nclass Box:\n    pass\n"
              "inner = [1]\na = {'k': inner}\nb = [inner]\nbox = Box()\nbox.items = inner\n"
              "arr = np.zeros(3)\nv = arr[1:]\nholder = {'arr': arr, 'v': v}\n"
              "df = pd.DataFrame({'x': [1, 2]})\nframes = {'d': df}")
    ok(shell, "%%cluster\na['k'].append(2)\nholder['arr'][1] = 5\nholder['v'][1] = 7\n"
              "frames['d']['y'] = 3\ntaken = box.items\npid = os.getpid()")
    ns = shell.user_ns
    assert ns["pid"] == job_pid() != os.getpid()
    assert ns["inner"] == [1, 2] and ns["a"]["k"] is ns["b"][0] is ns["box"].items is ns["inner"]
    assert ns["taken"] is ns["inner"]   # an object from inside an input is the kernel's own
    assert ns["arr"].tolist() == [0, 5, 7] and ns["v"].tolist() == [5, 7]
    assert ns["holder"]["arr"] is ns["arr"] and ns["holder"]["v"] is ns["v"]
    assert list(ns["df"].columns) == ["x", "y"] and ns["frames"]["d"] is ns["df"]
    ok(shell, "%%cluster\na['k'] = [9]\nbox.items.append(3)\ngot = frames['d']")
    assert ns["a"]["k"] == [9] and ns["a"]["k"] is not ns["inner"]   # a new list, as here
    assert ns["got"] is ns["df"] and list(ns["df"].columns) == ["x", "y"]
    assert ns["inner"] == [1, 2, 3] and ns["b"][0] is ns["inner"] is ns["box"].items


def test_numpy_views_and_aliases_see_the_change(shell):
    np = pytest.importorskip("numpy")
    ok(shell, "import numpy as np\na = np.arange(4)\nv = a[:2]\nb = a")
    ok(shell, "%%cluster\nv[0] = 99")
    ns = shell.user_ns
    assert ns["a"].tolist() == [99, 1, 2, 3] and ns["v"].base is ns["a"]
    ok(shell, "%%cluster\nb[1] = -1")
    assert ns["a"].tolist() == [99, -1, 2, 3] and ns["b"] is ns["a"]
    # both an array and its view as inputs: one memory in the job
    ok(shell, "%%cluster\nv[1] = 7\nseen = int(a[1])\nw = a[2:]")
    assert ns["seen"] == 7 and ns["a"][1] == 7
    assert ns["w"].base is ns["a"] and np.shares_memory(ns["w"], ns["a"])


def test_pandas_objects_are_updated_in_place(shell):
    pytest.importorskip("pandas")
    ok(shell, "import pandas as pd\ndf = pd.DataFrame({'a': [1, 2]})\nsame = df")
    ok(shell, "%%cluster\ndf['b'] = df['a'] * 10\ndf.loc[0, 'a'] = 5")
    ns = shell.user_ns
    assert ns["same"] is ns["df"] and list(ns["same"].columns) == ["a", "b"]
    assert ns["same"]["b"].tolist() == [10, 20] and ns["same"].loc[0, "a"] == 5


def test_a_large_unchanged_input_is_not_sent_again(shell, cj_home):
    pytest.importorskip("numpy")
    from clusterjupyter import serialize

    ok(shell, "import numpy as np\nbig = np.random.default_rng(3).random(1 << 18)\nsmall = [1]")
    expected = serialize.dump(shell.user_ns["big"]).sha256
    assert ok(shell, "%%cluster\nfloat(big[:3].sum()) + small[0]") > 1
    stored = next(cj_home.rglob(expected))
    first = stored.stat()
    ok(shell, "small.append(2)")
    assert ok(shell, "%%cluster\nlen(big) + len(small)") == (1 << 18) + 2
    assert (stored.stat().st_ino, stored.stat().st_mtime_ns) == (first.st_ino, first.st_mtime_ns)


def test_star_import_binds_the_kernels_own_objects(shell):
    pytest.importorskip("numpy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ok(shell, "%%cluster\nfrom numpy import *\nimport os\njob = os.getpid()")
    import numpy

    ns = shell.user_ns
    assert ns["job"] != os.getpid() and ns["linspace"] is numpy.linspace
    assert ns["sin"] is numpy.sin and ns["ndarray"] is numpy.ndarray


# -- kernel settings travel --------------------------------------------------------------------

def test_matplotlib_settings_and_style_travel(shell):
    pytest.importorskip("matplotlib")
    ok(shell, "import matplotlib\nmatplotlib.use('agg')\nimport matplotlib.pyplot as plt\n"
              "plt.style.use('ggplot')\nplt.rcParams['figure.figsize'] = (3.0, 2.0)\n"
              "from matplotlib_inline.backend_inline import InlineBackend\n"
              "InlineBackend.instance().figure_formats = {'svg'}")
    try:
        with capture_output() as cap:
            ok(shell, "%%cluster\nimport os\nimport matplotlib.pyplot as plt\n"
                      "fig = plt.figure()\nseen = (tuple(fig.get_size_inches()), "
                      "plt.rcParams['axes.facecolor'], plt.get_backend(), os.getpid())\n"
                      "plt.close(fig)")
        size, face, backend, pid = shell.user_ns["seen"]
        assert size == (3.0, 2.0) and face == "#E5E5E5" and pid != os.getpid()
        assert backend == "agg" and cap.outputs == []   # the kernel shows no figures either
        # with the inline backend, figures come in the kernel's format (svg)
        ok(shell, "matplotlib.use('module://matplotlib_inline.backend_inline')")
        with capture_output() as cap:
            ok(shell, "%%cluster\nplt.plot([1, 2]);")
        assert [sorted(o.data) for o in cap.outputs] == [["image/svg+xml", "text/plain"]]
        assert cap.outputs[0].data["text/plain"] == "<Figure size 300x200 with 1 Axes>"
    finally:
        ok(shell, "plt.style.use('default')\nInlineBackend.instance().figure_formats = {'png'}")


def test_pandas_and_numpy_display_options_travel(shell):
    pytest.importorskip("pandas")
    ok(shell, "import numpy as np\nimport pandas as pd\nnp.set_printoptions(precision=2)\n"
              "pd.set_option('display.width', 5000)\npd.set_option('display.max_rows', 4)")
    try:
        ok(shell, "%%cluster\nimport numpy as np, pandas as pd\ntext = repr(np.array([1 / 3]))\n"
                  "opts = (pd.get_option('display.width'), pd.get_option('display.max_rows'))\n"
                  "shown = repr(pd.Series(range(10)))")
        assert shell.user_ns["text"] == "array([0.33])"
        assert shell.user_ns["opts"] == (5000, 4) and "Length: 10" in shell.user_ns["shown"]
    finally:
        ok(shell, "np.set_printoptions(precision=8)\npd.reset_option('display.width')\n"
                  "pd.reset_option('display.max_rows')")


def test_warning_filters_sys_path_and_environment_travel(shell, tmp_path, monkeypatch):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "fidmod_cj.py").write_text("WHERE = 'lib'\n")
    monkeypatch.syspath_prepend(str(lib))
    monkeypatch.setenv("CJ_FID_SETTING", "from-the-kernel")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="stop here")
        r = run(shell, "%%cluster\nimport fidmod_cj, os\nfound = (fidmod_cj.WHERE, "
                       "os.environ['CJ_FID_SETTING'])\nimport warnings\n"
                       "warnings.warn('stop here')\nafter = 1")
    assert isinstance(r.error_in_exec, UserWarning) and "after" not in shell.user_ns
    assert shell.user_ns["found"] == ("lib", "from-the-kernel")
    rec = api.list_jobs(limit=1)[0]
    doc = json.loads(open(JobPaths.from_dir(rec.job_dir).manifest).read())["context"]
    assert doc["env"]["set"]["CJ_FID_SETTING"] == "from-the-kernel"
    assert str(lib) in doc["sys_path"]
    assert ["error", "stop here", "builtins:Warning", "", 0] in doc["warnings"]


def test_the_context_is_small_and_made_of_differences():
    pytest.importorskip("pandas")
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd

    from clusterjupyter import context

    plain = context.collect()
    assert "matplotlib" not in plain or not plain["matplotlib"].get("rc")
    with plt.style.context("ggplot"), pd.option_context("display.width", 5000):
        np.set_printoptions(precision=3)
        try:
            doc = context.collect()
        finally:
            np.set_printoptions(precision=8)
    assert len(json.dumps(doc)) < 8192
    assert doc["pandas"] == {"display.width": 5000} and doc["numpy"] == {"precision": 3}
    assert "axes.facecolor" in doc["matplotlib"]["rc"] and len(doc["matplotlib"]["rc"]) < 60


# -- what cannot travel ---------------------------------------------------------------------------

def test_what_cannot_travel_is_named(shell):
    import sqlite3  # noqa: F401

    ok(shell, "import sqlite3, socket\ndb = sqlite3.connect(':memory:')\n"
              "gen = (i for i in range(3))\nsock = socket.socket()")
    try:
        r = run(shell, "%%cluster\nrows = [db, gen, sock]")
        from clusterjupyter.errors import CaptureError

        assert isinstance(r.error_in_exec, CaptureError)
        assert set(r.error_in_exec.problems) == {"db", "gen", "sock"}
        assert api.list_jobs() == []
        from clusterjupyter.jobs import UnpicklableOutputWarning

        with pytest.warns(UnpicklableOutputWarning, match="conn") as caught:
            ok(shell, "%%cluster\nimport sqlite3\nconn = sqlite3.connect(':memory:')\nkept = 3")
        assert len(caught) == 1 and shell.user_ns["kept"] == 3
    finally:
        ok(shell, "sock.close()\ndb.close()")


# -- a real kernel -----------------------------------------------------------------------------

def test_real_kernel_shows_outputs_in_the_kernels_order(tmp_path):
    pytest.importorskip("matplotlib")
    from jupyter_client import KernelManager

    km = KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(tmp_path), env={**os.environ,
                                            "CLUSTERJUPYTER_HOME": str(tmp_path / "cj")})
    kc = km.blocking_client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)

        def cell(code: str) -> list[tuple[str, object]]:
            out: list[tuple[str, object]] = []

            def hook(msg: dict) -> None:
                kind, content = msg["msg_type"], msg["content"]
                if kind == "stream":
                    out.append((content["name"], content["text"]))
                elif kind in ("display_data", "execute_result"):
                    data = content["data"]
                    status = re.match(r"job [0-9a-f]{8} ", str(data.get("text/plain", "")))
                    if not status and "application/vnd.jupyter.widget-view+json" not in data:
                        out.append((kind, sorted(data)))
                elif kind == "error":
                    out.append(("error", (content["ename"], plain("\n".join(
                        content["traceback"])))))

            kc.execute_interactive(code, output_hook=hook, timeout=120)
            return out

        cell("%load_ext clusterjupyter\nimport os\nkernel_pid = os.getpid()")
        code = ("import matplotlib.pyplot as plt\nprint('before')\n"
                "plt.plot([1, 2])")
        plain_cell = cell(code)
        assert [k for k, _ in plain_cell] == ["stdout", "execute_result", "display_data"]
        assert cell("%%cluster\nimport os\njob_pid = os.getpid()\n" + code) == plain_cell
        assert cell("print(job_pid != kernel_pid)") == [("stdout", "True\n")]
        cell("%config InlineBackend.figure_format = 'svg'")
        assert cell("%%cluster\nplt.plot([1, 2]);\nplt.show()") == \
            [("display_data", ["image/svg+xml", "text/plain"])]
        assert cell("%%cluster\n!echo hi") == cell("!echo hi") == [("stdout", "hi\r\n")]
        mixed = ("from IPython.display import HTML, display\nimport sys\nprint('a')\n"
                 "display(HTML('<b>x</b>'))\nprint('b', file=sys.stderr, flush=True)\n"
                 "print('c')\n'v'")
        assert cell("%%cluster\n" + mixed) == cell(mixed) == [
            ("stdout", "a\n"), ("display_data", ["text/html", "text/plain"]), ("stderr", "b\n"),
            ("stdout", "c\n"), ("execute_result", ["text/plain"])]
        cell("def f(x):\n    return 1 / x")
        (kind, (ename, tb)), = cell("%%cluster\nf(0)")
        assert kind == "error" and ename == "ZeroDivisionError"
        assert "run_cell_magic" not in tb and ", in f(x)" in tb and "return 1 / x" in tb

        def form(out: list[tuple[str, object]]) -> list[tuple[str, object]]:
            return [(k, v[0] if k == "error" else  # type: ignore[index]
                     re.sub(r" at 0x[0-9a-f]+", "", v) if isinstance(v, str) else v)
                    for k, v in out]

        cell("%config InlineBackend.figure_format = 'png'")
        missing = "%reload_ext no_such_extension_cj\n%no_such_magic_cj numpy"
        assert form(cell("%%cluster\n" + missing)) == form(cell(missing)) == [
            ("error", "ModuleNotFoundError")]
        bad = "fig, ax = plt.subplots()\nax.set_title(r'$\\frac{$');"
        here = form(cell(bad))
        assert form(cell("%%cluster\n" + bad)) == here and here[-1] == (
            "display_data", ["text/plain"]) and "_draw_all_if_interactive" in str(here[0])
        left_open = ["import matplotlib\nmatplotlib.use('svg')\nimport matplotlib.pyplot as plt\n"
                     "plt.plot([1, 2])\nplt.savefig('a.svg')", "%matplotlib inline",
                     "plt.figure()\nplt.plot([3, 1]);"]
        here = [cell(c) for c in left_open]
        there = [cell("%%cluster\n" + c) for c in left_open]
        assert there == here and here[2] == [("display_data", ["image/png", "text/plain"])] * 2
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_displays_in_the_job_are_formatted_as_the_kernel_formats_them(shell):
    long = "list(range(40))"
    with capture_output() as kernel:
        ok(shell, f"from IPython.display import display\ndisplay({long})")
    with capture_output() as job:
        ok(shell, f"%%cluster\nfrom IPython.display import display\ndisplay({long})")
    assert [o.data for o in job.outputs] == [o.data for o in kernel.outputs]
    assert "\n" in job.outputs[0].data["text/plain"]   # pretty-printed, as IPython does


def test_settings_the_cell_changes_are_the_kernels_afterwards(shell):
    pytest.importorskip("pandas")
    ok(shell, "import matplotlib, pandas as pd\nmatplotlib.use('module://matplotlib_inline."
              "backend_inline')")
    try:
        ok(shell, "%%cluster\nimport matplotlib.pyplot as plt\nimport pandas as pd, os\n"
                  "plt.rcParams['figure.figsize'] = (4.0, 3.0)\n"
                  "pd.set_option('display.width', 3)\n"
                  "os.environ['CJ_FID_BACK'] = 'yes'\njob = os.getpid()")
        import matplotlib
        import pandas as pd

        assert shell.user_ns["job"] != os.getpid()
        assert tuple(matplotlib.rcParams["figure.figsize"]) == (4.0, 3.0)
        assert pd.get_option("display.width") == 3 and os.environ["CJ_FID_BACK"] == "yes"
        with capture_output() as cap:
            ok(shell, "%%cluster\nfig, ax = plt.subplots()")
        assert cap.outputs[0].data["text/plain"] == "<Figure size 400x300 with 1 Axes>"
        # a backend chosen in a job is the kernel's: the svg backend shows nothing
        ok(shell, "%%cluster\nimport matplotlib\nmatplotlib.use('svg')")
        assert matplotlib.get_backend() == "svg"
        with capture_output() as cap:
            ok(shell, "%%cluster\nfig, ax = plt.subplots()\nax.plot([1, 2])")
        assert cap.outputs == []
    finally:
        import matplotlib

        matplotlib.rcdefaults()
        os.environ.pop("CJ_FID_BACK", None)
        ok(shell, "pd.reset_option('display.width')")


def test_a_cell_of_kernel_magics_acts_on_the_kernel(shell):
    with capture_output() as cap:
        r = run(shell, "%%cluster\n# configure this kernel\n%load_ext no_such_extension_cj")
    assert isinstance(r.error_in_exec, ModuleNotFoundError) and api.list_jobs() == []
    assert "run_cell_magic" not in cap.stdout
    ok(shell, "%%cluster\n%env CJ_FID_HERE=1")
    assert os.environ.pop("CJ_FID_HERE") == "1" and api.list_jobs() == []
