"""``biasbench ui``: start a tracker's web UI on 127.0.0.1 for a runs folder."""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

from ..errors import BiasbenchError

DEFAULT_PORTS = {"mlflow": 5000, "tensorboard": 6006, "aim": 43800}


def ui_command(backend: str, runs: str | os.PathLike, port: int | None = None) -> tuple[list[str], str]:
    """The command line that serves ``backend``'s UI for ``runs``, and its URL. Clear errors when the
    store is missing or the UI is not installed."""
    runs = Path(runs).resolve()
    if backend not in DEFAULT_PORTS:
        raise BiasbenchError(f"unknown tracker {backend!r} for the UI; expected one of: {', '.join(DEFAULT_PORTS)}")
    port = port or DEFAULT_PORTS[backend]
    if not 1 <= port <= 65535:
        raise BiasbenchError(f"--port must be in [1, 65535], got {port}")
    host = "127.0.0.1"
    if backend == "mlflow":
        db = runs / "mlflow.db"
        if not db.is_file():
            raise BiasbenchError(f"no MLflow store in {runs} (no mlflow.db); train with --tracker mlflow first")
        spec = importlib.util.find_spec("mlflow")
        ui_files = spec and Path(spec.origin).parent / "server" / "js" / "build" / "index.html"
        if not (ui_files and ui_files.is_file()) or importlib.util.find_spec("flask") is None:
            raise BiasbenchError("the MLflow UI needs the full mlflow package (biasbench installs only "
                                 "mlflow-skinny): pip install 'biasbench[ui]'")
        cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", f"sqlite:///{db}",
               "--default-artifact-root", (runs / "mlartifacts").as_uri(), "--host", host, "--port", str(port)]
    elif backend == "tensorboard":
        logdir = runs / "tensorboard"
        if not logdir.is_dir():
            raise BiasbenchError(f"no TensorBoard logs in {runs} (no tensorboard/); train with --tracker tensorboard")
        if importlib.util.find_spec("tensorboard") is None:
            raise BiasbenchError("TensorBoard is not installed: pip install 'biasbench[tensorboard]'")
        cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", host,
               "--port", str(port)]
    else:
        if not (runs / ".aim").is_dir():
            raise BiasbenchError(f"no Aim repository in {runs} (no .aim/); train with --tracker aim")
        exe = Path(sys.executable).parent / "aim"
        exe = str(exe) if exe.exists() else shutil.which("aim")
        if importlib.util.find_spec("aim") is None or not exe:
            raise BiasbenchError("Aim is not installed: pip install 'biasbench[aim]' (Python < 3.13)")
        cmd = [exe, "up", "--repo", str(runs), "--host", host, "--port", str(port)]
    return cmd, f"http://{host}:{port}"


def serve(backend: str, runs: str | os.PathLike, port: int | None = None) -> int:
    """Print the URL, then become the UI server (exec): stopping this process stops the server too."""
    cmd, url = ui_command(backend, runs, port)
    print(f"{backend} UI for {runs}: {url}  (Ctrl+C stops it)", flush=True)
    sys.stderr.flush()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "AIM_UI_TELEMETRY_ENABLED": "0"}
    os.execve(cmd[0], cmd, env)
    return 0  # not reached
