"""The console in Chromium against the whole service (`fleet`: Ray, PostgreSQL, S3, ComfyUI
stand-ins; no keys): it loads, lists the endpoints, submits through a schema-built form and shows
the output image, and shows a task submitted by the API as it appears and changes.

Also takes the README's screenshots (`CONSOLE_SCREENSHOTS=docs/img` writes them there).
"""

from __future__ import annotations

import io
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.console.conftest import VIEWPORT, service_root
from tests.support.fleet import Fleet

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.postgres, pytest.mark.s3]

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


async def knobs(fleet: Fleet, values: dict[str, Any]) -> None:
    async with httpx.AsyncClient() as c:
        for s in fleet.standins:
            r = await c.post(f"{s.url}/_standin/knobs", json=values)
            assert r.status_code == 200, r.text


@pytest.fixture
async def slow_nodes(fleet: Fleet) -> AsyncIterator[None]:
    """Each stand-in node takes a while, so tasks are seen queued and running."""
    await knobs(fleet, {"node_delay": 0.4})
    try:
        yield
    finally:
        await knobs(fleet, {"node_delay": 0.0})


def gradient_png(width: int = 160, height: int = 96) -> bytes:
    img = Image.new("RGB", (width, height))
    img.putdata([(x * 255 // width, y * 255 // height, 180)
                 for y in range(height) for x in range(width)])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


async def submit(fleet: Fleet, workflow: str, params: dict[str, Any], **extra: Any) -> str:
    r = await fleet.http.post("/tasks", json={"workflow": workflow, "params": params, **extra})
    assert r.status_code == 202, r.text
    return str(r.json()["task_id"])


async def test_loads_and_lists_the_endpoints(
    fleet: Fleet, page: Any, slow_nodes: None, screenshots: Path
) -> None:
    endpoints = (await fleet.http.get("/endpoints")).json()
    assert endpoints, "the fleet has stand-in endpoints"
    # Some work in flight, so the fleet's numbers are not all zero.
    ids = [await submit(fleet, "solid", {"width": 64, "height": 64, "color": c})
           for c in (0x3D6DFF, 0x16A34A, 0xDC2626, 0xF0B44C, 0x7C3AED, 0x0EA5E9)]

    await page.goto(service_root(fleet.url) + "/")
    assert page.url.endswith("/console/")
    # The task list's fleet strip names every endpoint.
    for e in endpoints:
        await page.locator(".strip .chip", has_text=e["endpoint"]).wait_for()

    await page.click("#nav-fleet")
    for e in endpoints:
        row = page.locator(f"tr[data-endpoint='{e['endpoint']}']")
        await row.wait_for()
        assert "connected" in await row.locator(".state").inner_text()
        assert all(await row.locator("td.num").all_inner_texts())  # zeros are shown, not blanks
    await page.locator(".stat .value", has_text=re.compile(r"^[1-9]")).first.wait_for()
    await page.screenshot(path=str(screenshots / "console-fleet.png"))

    for tid in ids:
        await fleet.wait_final(tid)
    await page.goto(service_root(fleet.url) + "/console/#/tasks")
    await page.locator(f"tr[data-task-id='{ids[-1]}'][data-status='succeeded']").wait_for()
    assert not page.problems, page.problems


async def test_a_task_submitted_by_the_api_appears_live(
    fleet: Fleet, page: Any, slow_nodes: None
) -> None:
    await page.goto(service_root(fleet.url) + "/console/#/tasks")
    await page.locator("#task-rows").wait_for()
    await page.locator(".foot, #task-rows td.empty").first.wait_for()

    client_id = f"console-live-{uuid.uuid4().hex[:8]}"
    task_id = await submit(fleet, "solid", {"width": 32, "height": 32}, client_task_id=client_id)
    row = page.locator(f"tr[data-task-id='{task_id}']")
    await row.wait_for()  # appears without a reload
    done = page.locator(f"tr[data-task-id='{task_id}'][data-status='succeeded']")
    await done.wait_for(timeout=60_000)
    # …and the status filter narrows the list to it or hides it.
    await page.click(".seg button[data-status='failed']")
    await row.wait_for(state="detached")
    await page.click(".seg button[data-status='succeeded']")
    await row.wait_for()
    # …and the client task id search finds exactly it.
    await page.fill("#filter-client-id", client_id)
    await page.press("#filter-client-id", "Enter")
    await page.wait_for_function(
        "() => document.querySelectorAll('#task-rows tr[data-task-id]').length === 1")
    await row.wait_for()
    assert not page.problems, page.problems


async def test_an_unknown_task_says_so(fleet: Fleet, page: Any) -> None:
    await page.goto(service_root(fleet.url) + f"/console/#/tasks/{uuid.uuid4()}")
    await page.locator(".banner.bad", has_text="task_not_found").wait_for()


async def test_a_refused_parameter_is_shown_at_its_field(fleet: Fleet, page: Any) -> None:
    await page.goto(service_root(fleet.url) + "/console/#/new/solid")
    await page.fill("input[data-param='width']", "99999")
    await page.click("#submit")
    field = page.locator(".field.invalid[data-field='width']")
    await field.wait_for()
    assert await field.locator(".problem").inner_text()
    assert "#/new/solid" in page.url  # nothing submitted: the form stays


async def test_the_form_submits_a_task_and_shows_its_output_image(
    fleet: Fleet, page: Any, screenshots: Path
) -> None:
    await page.goto(service_root(fleet.url) + "/console/#/new/invert")
    form = page.locator("#task-form[data-workflow='invert']")
    await form.wait_for()
    # The schema's image parameter is a file picker; its file goes out as a data: URL.
    await page.set_input_files("input[type=file][data-param='image']", files=[
        {"name": "gradient.png", "mimeType": "image/png", "buffer": gradient_png()}])
    await page.locator("img.thumb:visible").wait_for()
    await page.screenshot(path=str(screenshots / "console-new-task.png"))
    await page.click("#submit")
    await page.wait_for_url(re.compile(rf"#/tasks/{UUID}$"))
    task_id = page.url.rsplit("/", 1)[1]

    await page.locator(".head .pill.s-succeeded").wait_for(timeout=60_000)
    img = page.locator("#outputs figure.output img")
    await img.wait_for()
    await page.wait_for_function(
        "() => { const i = document.querySelector('#outputs img');"
        " return i && i.complete && i.naturalWidth > 0; }")
    assert await img.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [160, 96]
    await page.locator("#timeline tr[data-type='task.succeeded']").wait_for()
    fill = await page.locator("#progress .fill").evaluate("f => f.style.width")
    assert fill == "100%"
    await page.screenshot(path=str(screenshots / "console-task.png"), full_page=True)

    task = (await fleet.http.get(f"/tasks/{task_id}")).json()
    assert task["status"] == "succeeded" and task["workflow"] == "invert"
    assert [o["content_type"] for o in task["outputs"]] == ["image/png"]
    assert not page.problems, page.problems


async def test_a_video_output_plays_in_a_video_element(fleet: Fleet, page: Any) -> None:
    task_id = await submit(fleet, "solid_video", {"frames": 4, "color": 0x00FF00})
    task = await fleet.wait_final(task_id)
    assert task["status"] == "succeeded", task
    (content_type,) = {o["content_type"] for o in task["outputs"]}
    assert content_type.startswith("video/")
    await page.goto(service_root(fleet.url) + f"/console/#/tasks/{task_id}")
    video = page.locator(f"#outputs figure.output[data-content-type='{content_type}'] video")
    await video.wait_for()
    # The browser reads the stored file's metadata through the presigned URL.
    await page.wait_for_function("() => document.querySelector('#outputs video').readyState >= 1")
    assert not page.problems, page.problems


async def test_cancel_on_the_task_page_ends_the_task(fleet: Fleet, page: Any) -> None:
    await knobs(fleet, {"stall_worker": True})  # the prompt waits in ComfyUI's queue
    try:
        task_id = await submit(fleet, "solid", {"width": 8, "height": 8})
        await page.goto(service_root(fleet.url) + f"/console/#/tasks/{task_id}")
        await page.locator("#timeline tr[data-type='task.dispatched']").wait_for(timeout=30_000)
        await page.click("#cancel")
        await page.locator(".head .pill.s-cancelled").wait_for(timeout=30_000)
    finally:
        await knobs(fleet, {"stall_worker": False})
    await page.locator("#timeline tr[data-type='task.cancelled']").wait_for()
    assert not await page.locator("#cancel").count()
    assert (await fleet.http.get(f"/tasks/{task_id}")).json()["status"] == "cancelled"
    assert not page.problems, page.problems


async def test_a_failed_task_shows_its_error_and_failing_node(fleet: Fleet, page: Any) -> None:
    await knobs(fleet, {"fail": [{"node": "SaveImage", "count": 1, "exception_type": "RuntimeError",
                                  "exception_message": "disk on fire"}]})
    try:
        task_id = await submit(fleet, "solid", {"width": 8, "height": 8})
        await page.goto(service_root(fleet.url) + f"/console/#/tasks/{task_id}")
        box = page.locator("#task-error .error-box")
        await box.wait_for(timeout=60_000)
        text = await box.inner_text()
    finally:
        await knobs(fleet, {"fail": []})
    assert "comfyui_execution_error" in text and "SaveImage" in text and "disk on fire" in text
    await page.locator("#timeline tr[data-type='task.failed']").wait_for()
    await page.locator(".head .pill.s-failed").wait_for()
    assert not page.problems, page.problems


async def test_a_task_page_follows_the_task_live(
    fleet: Fleet, page: Any, screenshots: Path
) -> None:
    streams: list[str] = []
    page.on("request", lambda r: "/stream" in r.url and streams.append(r.url))
    await knobs(fleet, {"stall_worker": True})  # accepted prompts wait in ComfyUI's queue
    try:
        task_id = await submit(fleet, "solid", {"width": 16, "height": 16, "batch_size": 2})
        await page.goto(service_root(fleet.url) + f"/console/#/tasks/{task_id}")
        await page.locator("#timeline tr[data-type='task.dispatched']").wait_for(timeout=30_000)
        assert await page.locator("#outputs figure.output").count() == 0
    finally:
        await knobs(fleet, {"stall_worker": False})
    # The rest arrives on the open stream: no reload.
    await page.locator("#timeline tr[data-type='task.succeeded']").wait_for(timeout=60_000)
    await page.locator(".head .pill.s-succeeded").wait_for()
    await page.locator("#outputs figure.output img >> nth=1").wait_for()
    assert any(f"/tasks/{task_id}/stream" in u for u in streams)
    seqs = [int(s) for s in await page.locator("#timeline tr td:first-child").all_inner_texts()]
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))

    # The list of the session's tasks, for the README.
    await page.click("nav a[data-view='tasks']")
    await page.locator(f"tr[data-task-id='{task_id}']").wait_for()
    await page.locator(".strip .chip").first.wait_for()
    await page.screenshot(path=str(screenshots / "console-tasks.png"))
    assert not page.problems, page.problems


async def test_the_dark_theme_follows_the_system(
    fleet: Fleet, browser: Any, screenshots: Path
) -> None:
    params = {"width": 96, "height": 64, "color": 0x6D8DFF, "batch_size": 3}
    task_id = await submit(fleet, "solid", params)
    await fleet.wait_final(task_id)
    context = await browser.new_context(viewport=VIEWPORT, color_scheme="dark")
    try:
        page = await context.new_page()
        await page.goto(service_root(fleet.url) + f"/console/#/tasks/{task_id}")
        await page.locator("#timeline tr[data-type='task.succeeded']").wait_for()
        await page.wait_for_function(
            "() => [...document.querySelectorAll('#outputs img')]"
            ".every(i => i.complete && i.naturalWidth > 0)")
        background = await page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(15, 17, 21)", background
        await page.screenshot(path=str(screenshots / "console-task-dark.png"), full_page=True)
    finally:
        await context.close()
