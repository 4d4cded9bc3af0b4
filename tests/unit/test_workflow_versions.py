"""Workflow versions: the digest of the two files, a stored version parsed back, and the
endpoint's rendering of a task's prompt from the stored version (not the files on disk)."""

from __future__ import annotations

import dataclasses
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from comfy_fleet import errors
from comfy_fleet.log.event_log import InMemoryEventLog
from comfy_fleet.log.task_state import TaskState
from comfy_fleet.prompts import render
from comfy_fleet.workflows import registry, versions

SHIPPED = Path(__file__).resolve().parents[2] / "workflows"


def test_digest_is_short_stable_and_depends_on_both_files_and_their_split() -> None:
    v = versions.digest(b'{"1": {}}', b"x = 1")
    assert versions.is_version(v) and len(v) == versions.VERSION_HEX
    assert v == versions.digest(b'{"1": {}}', b"x = 1")
    assert v != versions.digest(b'{"1": {}} ', b"x = 1")
    assert v != versions.digest(b'{"1": {}}', b"x = 2")
    # the same bytes split differently between the files are another version
    assert versions.digest(b"ab", b"c") != versions.digest(b"a", b"bc")
    assert not versions.is_version(v.upper()) and not versions.is_version(v + "0")
    assert not versions.is_version(None)


def test_a_loaded_workflow_and_its_stored_version_are_the_same_workflow() -> None:
    loaded = registry.load_workflow(SHIPPED, "img2img")
    assert loaded.version == versions.digest(
        (SHIPPED / "img2img.json").read_bytes(), (SHIPPED / "img2img.toml").read_bytes()
    )
    stored = registry.stored_of(loaded)
    assert stored.intact()
    back = registry.workflow_from_stored(stored)
    assert (back.name, back.version, back.graph, back.manifest) == (
        loaded.name, loaded.version, loaded.graph, loaded.manifest)


def test_stored_bytes_that_are_not_the_version_are_refused() -> None:
    stored = registry.stored_of(registry.load_workflow(SHIPPED, "solid"))
    edited = dataclasses.replace(stored, manifest_toml=stored.manifest_toml + b"\n# edited\n")
    assert not edited.intact()
    with pytest.raises(errors.ManifestInvalid, match="do not match the version"):
        registry.workflow_from_stored(edited)


def _state(workflow: registry.Workflow, params: dict[str, object], **kw: object) -> TaskState:
    now = datetime.now(UTC)
    fields: dict[str, object] = {
        "task_id": "0b1f1c8e-4a51-4d3c-9a57-5d1b8a2f0c11", "seq": 1, "workflow": workflow.name,
        "workflow_version": workflow.version, "params": params, "prompt": {},
        "client_task_id": None, "callback_url": None, "priority": 0, "request_hash": "h",
        "origin": "tasks", "inputs": [], "required_labels": [], "created_at": now,
        "updated_at": now,
    }
    return TaskState(**(fields | kw))  # type: ignore[arg-type]


async def test_the_prompt_is_rendered_from_the_stored_version_after_the_files_changed(
    tmp_path: Path,
) -> None:
    shutil.copy(SHIPPED / "img2img.json", tmp_path)
    shutil.copy(SHIPPED / "img2img.toml", tmp_path)
    old = registry.load_workflow(tmp_path, "img2img")
    log = InMemoryEventLog()
    await log.remember_version(registry.stored_of(old))
    resolved = old.validate({"image": "aGVsbG8=", "text": "a cat", "seed": 7})
    inputs = [{"param": "image", "filename": "fleet/t-image.png", "s3_key": "k", "sha256": "s"}]
    state = _state(old, {**resolved, "image": "<image>"}, inputs=inputs)
    want = old.build_prompt(resolved, task_id=state.task_id,
                            image_names={"image": "fleet/t-image.png"})
    # the files change on disk: the task still renders the version it was accepted with
    (tmp_path / "img2img.toml").write_text((SHIPPED / "img2img.toml").read_text() + "\n# v2\n")
    assert registry.load_workflow(tmp_path, "img2img").version != old.version
    renderer = render.PromptRenderer(log)
    assert await renderer.prompt_of(state) == want
    assert await renderer.prompt_of(state) == want  # from the cache
    assert list(renderer._cache) == [("img2img", old.version)]


async def test_a_task_recorded_with_its_graph_sends_that_graph() -> None:
    wf = registry.load_workflow(SHIPPED, "solid")
    graph = {"1": {"class_type": "EmptyImage", "inputs": {}}}
    state = _state(wf, {}, prompt=graph, workflow_version="f" * 64)
    assert await render.PromptRenderer(InMemoryEventLog()).prompt_of(state) is graph


async def test_a_version_not_stored_is_unknown() -> None:
    wf = registry.load_workflow(SHIPPED, "solid")
    with pytest.raises(errors.WorkflowVersionUnknown, match=wf.version):
        await render.PromptRenderer(InMemoryEventLog()).prompt_of(_state(wf, {}))


async def test_the_cache_keeps_the_latest_versions() -> None:
    log = InMemoryEventLog()
    renderer = render.PromptRenderer(log, cache_size=2)
    names = ["solid", "invert", "resize"]
    for name in names:
        wf = registry.load_workflow(SHIPPED, name)
        await log.remember_version(registry.stored_of(wf))
        await renderer.workflow(name, wf.version)
    assert [n for n, _ in renderer._cache] == names[1:]
