"""The environment the example notebooks run in, for the tests (nbval) and for regenerating outputs.

The notebooks use four profiles: the built-in ``local``, ``slurm`` (a SLURM cluster used from
this machine, as on a login node), ``ssh`` (an SSH host without a scheduler) and ``slurm-ssh``
(the same SLURM reached over SSH, as from a laptop). They never create them: on Binder
``binder/start`` writes them for the SLURM and sshd it starts; in CI and here the same profiles
are written for the project's test clusters (``scripts/testclusters.sh``, started through
``tests/testclusters.py``) into a fresh, temporary ``CLUSTERJUPYTER_HOME``, so a developer's real
profiles and journal are never touched and every run starts from an empty journal.

Regenerate the committed outputs (same environment as ``pytest --nbval``)::

    python notebooks/nbenv.py                      # every notebook
    python notebooks/nbenv.py quickstart slurm     # some of them
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

#: test services each notebook needs (scripts/testclusters.sh names); absent: none
NEEDS: dict[str, tuple[str, ...]] = {
    "slurm.ipynb": ("slurm", "sshd"),
    "ssh.ipynb": ("slurm", "sshd"),
    "troubleshooting.ipynb": ("slurm", "sshd"),
}
#: pytest markers of the notebooks that need services (so ``-m "not slurm"`` leaves them out)
MARKERS: dict[str, tuple[str, ...]] = {
    "slurm.ipynb": ("slurm",),
    "ssh.ipynb": ("ssh", "slurm"),
    "troubleshooting.ipynb": ("ssh", "slurm"),
}


def notebooks() -> list[Path]:
    return sorted(p for p in HERE.glob("*.ipynb") if not p.name.startswith("."))


def write_profiles(home: Path, info: dict) -> None:
    """The ``slurm``, ``ssh`` and ``slurm-ssh`` profiles for the test clusters in ``info``.

    ``info`` is ``clusters.json`` (see scripts/README.md). ``binder/start`` writes profiles of
    the same names and kinds for the services it starts.
    """
    from clusterjupyter.profiles import Profile, save_profile

    path = str(home / "config" / "profiles.toml")
    if "slurm" in info:
        save_profile(Profile(name="slurm", scheduler="slurm",
                             description="one-node SLURM on this machine",
                             resources={"partition": info["slurm"]["partition"]}), path)
    if "ssh" in info:
        ssh = info["ssh"]
        over_ssh = dict(host=ssh["host"], port=ssh["port"], user=ssh["user"],
                        identity_file=ssh["identity_file"], known_hosts=ssh["known_hosts"],
                        python=sys.executable)
        save_profile(Profile(name="ssh", scheduler="local", workdir=str(home / "ssh-work"),
                             description="an SSH host without a scheduler", **over_ssh), path)
        if "slurm" in info:
            save_profile(Profile(name="slurm-ssh", scheduler="slurm",
                                 workdir=str(home / "slurm-ssh-work"),
                                 description="the same SLURM, reached over SSH",
                                 resources={"partition": info["slurm"]["partition"]},
                                 **over_ssh), path)


def prepare(notebook: str) -> dict[str, str]:
    """Start what ``notebook`` needs; return the environment variables its kernel must get.

    Raises RuntimeError if a test cluster cannot be started (the tests then fail, never skip).
    """
    stem = Path(notebook).stem
    home = Path(tempfile.mkdtemp(prefix=f"cj-notebook-{stem}-"))
    needs = NEEDS.get(Path(notebook).name, ())
    if needs:
        sys.path.insert(0, str(REPO / "tests"))
        import testclusters

        write_profiles(home, testclusters.ensure(*needs))
    return {"CLUSTERJUPYTER_HOME": str(home)}


def cleanup(env: dict[str, str]) -> None:
    """Remove the temporary home :func:`prepare` made."""
    import shutil

    home = env.get("CLUSTERJUPYTER_HOME", "")
    if Path(home).name.startswith("cj-notebook-"):
        shutil.rmtree(home, ignore_errors=True)


def execute(path: Path) -> None:
    """Run ``path`` in place (nbclient, as ``jupyter nbconvert --execute --inplace`` does) with
    the kernel and environment ``pytest --nbval --nbval-current-env`` uses."""
    import nbformat
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient
    from nbval.kernel import CURRENT_ENV_KERNEL_NAME, NbvalKernelspecManager

    saved = dict(os.environ)
    env = prepare(path.name)
    os.environ.update(env)
    os.environ.pop("JPY_SESSION_NAME", None)
    try:
        nb = nbformat.read(path, as_version=4)
        km = KernelManager(kernel_name=CURRENT_ENV_KERNEL_NAME,
                           kernel_spec_manager=NbvalKernelspecManager())
        NotebookClient(nb, km=km, timeout=600, record_timing=False, store_widget_state=False,
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
        cleanup(env)
    nb.metadata.pop("widgets", None)
    nbformat.write(nb, path)


def main(argv: list[str]) -> int:
    chosen = notebooks()
    if argv:
        wanted = {a.removesuffix(".ipynb") for a in argv}
        chosen = [p for p in chosen if p.stem in wanted]
        missing = wanted - {p.stem for p in chosen}
        if missing:
            print(f"no such notebook: {', '.join(sorted(missing))}", file=sys.stderr)
            return 2
    for path in chosen:
        print(f"executing {path.name}", file=sys.stderr)
        execute(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
