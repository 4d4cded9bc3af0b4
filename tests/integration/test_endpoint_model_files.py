"""An EndpointWorker (no Ray) keeps its ComfyUI's model files fresh: against a real in-process
stand-in, a file copied into a model folder is found by the next periodic read of /object_info and
told to the router at once (a new node-info digest, the files counted per folder), and a reconnect
reads it again too."""

from __future__ import annotations

from pathlib import Path

from actors.endpoint import EndpointWorker
from comfy_fleet import storage
from comfy_fleet.config import Settings, parse_endpoint
from comfy_fleet.log.event_log import InMemoryEventLog
from comfy_fleet.workflows import model_files
from comfy_standin.testing import run_standin
from tests.integration.test_endpoint_worker import FakeRouter
from tests.support.polling import eventually


def worker(host_port: str, router: FakeRouter, tmp_path: Path, refresh_s: float) -> EndpointWorker:
    return EndpointWorker(
        parse_endpoint(host_port), log=InMemoryEventLog(), router=router,
        settings=Settings(default_failed_image_path=tmp_path / "failed",
                          node_info_refresh_s=refresh_s),
        store=storage.InMemoryBlobStore(),
    )


def copy_lora(models_dir: Path, name: str) -> None:
    path = models_dir / "loras" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"weights")


async def test_a_file_copied_onto_the_host_reaches_the_router(tmp_path: Path) -> None:
    async with run_standin(models={"loras": ["configured.safetensors"]}) as s:
        router = FakeRouter()
        w = worker(s.host_port, router, tmp_path, 0.2)
        await w.start()
        try:
            first = await eventually(
                lambda: next((st for st in router.statuses if st.get("model_files")), None),
                what="a status with the model files")
            assert first["model_files"]["loras"] == 1
            assert first["model_files"]["checkpoints"] == 0

            copy_lora(s.models_dir, "copied.safetensors")  # no reconnect: the timer finds it
            told = await eventually(
                lambda: next((st for st in router.statuses
                              if (st.get("model_files") or {}).get("loras") == 2), None),
                what="the router told of the copied file")
            assert told["node_info_digest"] != first["node_info_digest"]
            catalog = await w.node_catalog()
            assert catalog is not None and catalog["digest"] == told["node_info_digest"]
            assert model_files.held(catalog["object_info"])["loras"] == {
                "configured.safetensors", "copied.safetensors"}
            assert (await w.status())["model_files"]["loras"] == 2

            # Reads that find nothing new tell the router nothing.
            told_before = len(router.statuses)
            assert not await w.server.learn()
            assert len(router.statuses) == told_before
        finally:
            await w.stop()


async def test_a_reconnect_reads_the_model_files_again(tmp_path: Path) -> None:
    async with run_standin() as s:
        w = worker(s.host_port, FakeRouter(), tmp_path, 0)
        await w.start()
        try:
            await eventually(lambda: w.server.model_files is not None, what="model files read")
            assert w.server.model_files["loras"] == frozenset()
            copy_lora(s.models_dir, "late.safetensors")
            s.drop_websockets()
            await eventually(
                lambda: "late.safetensors" in (w.server.model_files or {}).get("loras", ()),
                what="the reconnect's read")
            assert (await w.status())["model_files"]["loras"] == 1
        finally:
            await w.stop()
