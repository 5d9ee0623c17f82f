"""Every research notebook (``examples/*_notebook.py``) executes top to bottom in its fast mode.

The notebooks are jupytext "percent" scripts: one source that runs as ``python examples/x.py`` and
opens as a notebook. Here each is converted with jupytext and executed cell by cell by nbclient on
the ``python3`` kernel of this interpreter, in a temporary working directory, with
``DEEPSTATE_FAST=1`` (tiny sizes), ``MPLBACKEND=Agg`` and ``DEEPSTATE_OUT`` pointing into that
directory (``DEEPSTATE_DATA`` passes through). Nothing is written next to the sources.

Notebooks that need the shared data (:data:`NEEDS_DATA`) follow ``conftest.py``: skipped with a
reason when ``$DEEPSTATE_DATA`` lacks the file, except under ``CI=true``, where they run anyway and
fail with the notebook's own message naming what is missing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import ipykernel  # noqa: F401  (the kernel nbclient starts)
import jupytext
import nbclient

from conftest import _in_ci  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*_notebook.py"))
# notebook -> file it needs under $DEEPSTATE_DATA
NEEDS_DATA = {"music_notebook.py": "jsb_chorales.pickle"}
CELL_TIMEOUT_S = 300


def _kernel_name(tmp_path: Path, monkeypatch) -> str:
    """``python3`` if a kernel spec of that name is found; else one written into a temporary prefix
    (pointing at this interpreter) and put on ``JUPYTER_PATH`` -- nothing is registered globally."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
        return "python3"
    except NoSuchKernel:
        from ipykernel.kernelspec import install

        prefix = tmp_path / "jupyter-prefix"
        install(kernel_name="python3", prefix=str(prefix))
        share = prefix / "share" / "jupyter"
        monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(filter(None, [str(share), os.environ.get("JUPYTER_PATH")])))
        return "python3"


def test_every_notebook_is_collected():
    names = {p.name for p in NOTEBOOKS}
    assert {"forecasting_notebook.py", "music_notebook.py", "kalman_sanity_notebook.py",
            "checks_notebook.py"} <= names, names
    assert "jsb_chorales.py" not in names  # the plain script is not a notebook


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_fast_mode(path, tmp_path, monkeypatch):
    needed = NEEDS_DATA.get(path.name)
    if needed is not None and not _in_ci():
        data = os.environ.get("DEEPSTATE_DATA", "")
        if not data or not (Path(data) / needed).is_file():
            pytest.skip(f"{path.name} needs {needed} under $DEEPSTATE_DATA (={data!r}); "
                        "point it at the shared data folder, e.g. ../shared/data")
    nb = jupytext.read(path)
    assert len(nb.cells) >= 4 and any(c.cell_type == "markdown" for c in nb.cells), "not a percent-format notebook"
    work = tmp_path / "work"
    work.mkdir()
    if os.environ.get("DEEPSTATE_DATA"):
        # the kernel runs in a temporary folder: a relative path (the README's ../shared/data) must not move
        monkeypatch.setenv("DEEPSTATE_DATA", os.path.abspath(os.environ["DEEPSTATE_DATA"]))
    monkeypatch.setenv("DEEPSTATE_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("DEEPSTATE_OUT", str(work / "out"))
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    kernel = _kernel_name(tmp_path, monkeypatch)
    client = nbclient.NotebookClient(nb, kernel_name=kernel, timeout=CELL_TIMEOUT_S,
                                     resources={"metadata": {"path": str(work)}})
    t0 = time.perf_counter()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as err:
        pytest.fail(f"{path.name} failed in fast mode:\n{err}", pytrace=False)
    elapsed = time.perf_counter() - t0
    print(f"{path.name}: {elapsed:.1f}s in fast mode")
    pngs = sorted((work / "out").rglob("*.png"))
    assert pngs, f"{path.name} saved no figure under DEEPSTATE_OUT"
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
