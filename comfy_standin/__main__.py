"""``python -m comfy_standin --port 8188 --input-dir … --output-dir … [--temp-dir …]
[--models "checkpoints=a.safetensors,b.safetensors;unet=flux1-dev.safetensors"]
[--node-delay 0.05] [--models-dir …]``

``--models-dir`` holds the model folders the comfy-fleet extension's model routes pull into
(default: ``<temp-dir>-models``); they take models from the bucket named by the environment's
``COMFY_FLEET_MODEL_BUCKET_URL`` (disk budget ``COMFY_FLEET_MODEL_CACHE_BYTES``).

Prints ``comfy_standin ready on 127.0.0.1:PORT`` once it listens; SIGTERM/SIGINT stop it.

``--count N`` runs N independent stand-ins in this one process (each its own queue, history,
websockets and directories ``<dir>/standin-<i>``, on ports PORT+i, or free ports when PORT is
0), printing a ready line for each. Benchmarks use it: N servers that stand for N GPU hosts
then cost this machine one process, not N.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
from pathlib import Path

from .knobs import Knobs
from .server import StandIn


def parse_models(text: str) -> dict[str, list[str]]:
    """``"checkpoints=a,b;unet=c"`` -> ``{"checkpoints": ["a", "b"], "unet": ["c"]}``."""
    models: dict[str, list[str]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        folder, _, names = part.partition("=")
        files = [n.strip() for n in names.split(",") if n.strip()]
        models.setdefault(folder.strip(), []).extend(files)
    return models


def _dirs(args: argparse.Namespace, temp: Path, index: int) -> tuple[Path, Path, Path]:
    """input, output and temp directories of stand-in `index` (its own subdirectories when
    several share the process)."""
    dirs = (Path(args.input_dir), Path(args.output_dir), temp)
    if args.count == 1:
        return dirs
    own = tuple(d / f"standin-{index}" for d in dirs)
    for d in own:
        d.mkdir(parents=True, exist_ok=True)
    return own  # type: ignore[return-value]


async def _main(args: argparse.Namespace) -> None:
    temp_root = Path(args.temp_dir or tempfile.mkdtemp(prefix="comfy-standin-temp-"))
    servers = []
    for i in range(args.count):
        input_dir, output_dir, temp = _dirs(args, temp_root, i)
        models_dir = None
        if args.models_dir:
            models_dir = Path(args.models_dir) / (f"standin-{i}" if args.count > 1 else "")
        server = StandIn(
            input_dir=input_dir,
            output_dir=output_dir,
            temp_dir=temp,
            models=parse_models(args.models or ""),
            knobs=Knobs(node_delay=args.node_delay),
            host=args.listen,
            models_dir=models_dir,
        )
        await server.start(args.port + i if args.port else 0)
        servers.append(server)
        print(f"comfy_standin ready on {server.host_port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        await server.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="comfy_standin", description="A stand-in ComfyUI server.")
    p.add_argument("--port", type=int, default=8188)
    p.add_argument("--listen", default="127.0.0.1")
    p.add_argument("--input-dir", required=True)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--temp-dir")
    p.add_argument("--models", default="")
    p.add_argument("--models-dir", help="where pulled models go (see above)")
    p.add_argument("--node-delay", type=float, default=0.0)
    p.add_argument("--count", type=int, default=1, help="stand-ins in this process (see above)")
    args = p.parse_args(argv)
    if args.count < 1:
        p.error("--count must be at least 1")
    try:
        asyncio.run(_main(args))
    except KeyboardInterrupt:  # pragma: no cover
        sys.exit(0)


if __name__ == "__main__":
    main()
