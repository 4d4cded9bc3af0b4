"""The cleanup custom node, loaded the way ComfyUI loads custom_nodes, behind a real aiohttp server.

ComfyUI's ``server`` and ``folder_paths`` modules are replaced by small fakes in ``sys.modules``.
"""

from __future__ import annotations

import shutil
import sys
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import aiohttp
from aiohttp.test_utils import TestClient, TestServer

from fake_comfy import MODULE_NAME, FakeComfy, load_extension, unload_extension


@pytest.fixture
def dirs(comfy: FakeComfy) -> dict[str, Path]:
    return comfy.dirs


@pytest.fixture
async def client(comfy: FakeComfy) -> AsyncIterator[TestClient]:
    module, app = load_extension(comfy)
    assert module.NODE_CLASS_MAPPINGS == {}
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        yield c
    unload_extension()


async def _delete(client: TestClient, **body: Any) -> tuple[int, Any]:
    resp = await client.post("/comfy-fleet/cleanup/delete", json=body)
    return resp.status, await resp.json()


async def test_info(client: TestClient) -> None:
    resp = await client.get("/comfy-fleet/cleanup/info")
    assert resp.status == 200
    assert await resp.json() == {"version": 2}


@pytest.mark.parametrize("kind", ["input", "output", "temp"])
async def test_deletes_a_file_of_each_folder(kind: str, client, dirs) -> None:
    for d in dirs.values():
        (d / "a.png").write_bytes(b"x")
    assert await _delete(client, type=kind, filename="a.png", subfolder="") == (200, {"deleted": True})
    assert not (dirs[kind] / "a.png").exists()
    assert all((d / "a.png").exists() for k, d in dirs.items() if k != kind)
    status, body = await _delete(client, type=kind, filename="a.png", subfolder="")
    assert status == 404 and "error" in body
    assert (await _delete(client, type=kind, filename="never.png"))[0] == 404


async def test_deletes_in_a_subfolder(client, dirs) -> None:
    (dirs["output"] / "jobs" / "t1").mkdir(parents=True)
    (dirs["output"] / "jobs" / "t1" / "o.png").write_bytes(b"x")
    assert (await _delete(client, type="output", filename="o.png", subfolder="jobs/t1"))[0] == 200
    assert not (dirs["output"] / "jobs" / "t1" / "o.png").exists()
    assert (dirs["output"] / "jobs" / "t1").is_dir()


async def test_a_symlink_inside_is_removed_not_its_target(client, dirs) -> None:
    (dirs["input"] / "real.png").write_bytes(b"x")
    (dirs["input"] / "link.png").symlink_to(dirs["input"] / "real.png")
    assert (await _delete(client, type="input", filename="link.png", subfolder=""))[0] == 200
    assert not (dirs["input"] / "link.png").is_symlink()
    assert (dirs["input"] / "real.png").exists()


@pytest.mark.parametrize(
    ("filename", "subfolder"),
    [
        ("", ""),
        ("/etc/passwd", ""),
        ("a.png", "/tmp"),
        ("C:\\Windows\\win.ini", ""),
        ("../outside/secret.txt", ""),
        ("secret.txt", "../outside"),
        ("..\\outside\\secret.txt", ""),
        ("a\nb.png", ""),
        ("a\x00.png", ""),
        ("a.png", "sub\x07"),
        ("sub", ""),
        (".", ""),
        ("", "sub"),
        ("escape.txt", ""),
        ("secret.txt", "linkdir"),
        (7, ""),
    ],
)
async def test_refusals(filename: Any, subfolder: str, client, dirs, tmp_path: Path) -> None:
    (dirs["output"] / "sub").mkdir()
    (dirs["output"] / "escape.txt").symlink_to(tmp_path / "outside" / "secret.txt")
    (dirs["output"] / "linkdir").symlink_to(tmp_path / "outside", target_is_directory=True)
    status, body = await _delete(client, type="output", filename=filename, subfolder=subfolder)
    assert status == 400 and isinstance(body["error"], str) and body["error"]
    assert (tmp_path / "outside" / "secret.txt").read_text() == "keep me"
    assert (dirs["output"] / "sub").is_dir() and (dirs["output"] / "escape.txt").is_symlink()


async def test_bad_bodies(client) -> None:
    resp = await client.post("/comfy-fleet/cleanup/delete", data=b"{not json",
                              headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert (await _delete_raw(client, [1, 2]))[0] == 400
    assert (await _delete(client, type="models", filename="a.png"))[0] == 400
    assert (await _delete(client, filename="a.png"))[0] == 400  # type is required


async def test_a_batch_answers_for_each_file_as_the_one_file_form_would(client, dirs, tmp_path: Path) -> None:
    (dirs["output"] / "a.png").write_bytes(b"x")
    (dirs["input"] / "fleet" / "t1").mkdir(parents=True)
    (dirs["input"] / "fleet" / "t1" / "b.png").write_bytes(b"x")
    batch = [
        {"type": "output", "filename": "a.png", "subfolder": ""},
        {"type": "output", "filename": "gone.png"},
        {"type": "output", "filename": "../outside/secret.txt"},
        {"type": "models", "filename": "a.png"},
        "not an object",
        {"type": "input", "filename": "b.png", "subfolder": "fleet/t1"},
    ]
    status, body = await _delete_raw(client, {"files": batch})
    assert status == 200
    assert [r.get("deleted") or r["status"] for r in body["results"]] == [True, 404, 400, 400, 400, True]
    assert all("error" in r for r in body["results"] if "status" in r)
    assert not (dirs["output"] / "a.png").exists()
    # The emptied task folder went with its file, as in the one-file form.
    assert not (dirs["input"] / "fleet" / "t1").exists() and (dirs["input"] / "fleet").is_dir()
    assert (tmp_path / "outside" / "secret.txt").read_text() == "keep me"


@pytest.mark.parametrize("files", [[], "a.png", {"type": "output"}, [{"type": "output", "filename": "x"}] * 1001])
async def test_a_batch_that_is_not_a_list_of_1_to_1000_files_is_refused(files: Any, client) -> None:
    status, body = await _delete_raw(client, {"files": files})
    assert status == 400 and "files must be a list" in body["error"]


async def test_subfolder_may_be_left_out_or_null(client, dirs) -> None:
    (dirs["output"] / "a.png").write_bytes(b"x")
    (dirs["output"] / "b.png").write_bytes(b"x")
    assert (await _delete(client, type="output", filename="a.png"))[0] == 200
    assert (await _delete(client, type="output", filename="b.png", subfolder=None))[0] == 200
    assert not any(dirs["output"].iterdir())


async def _delete_raw(client: TestClient, body: Any) -> tuple[int, Any]:
    resp = await client.post("/comfy-fleet/cleanup/delete", json=body)
    return resp.status, await resp.json()


def test_paths_module_is_importable_without_comfyui(tmp_path: Path) -> None:
    from comfyui_extension.comfy_fleet_cleanup import paths

    (tmp_path / "x.png").write_bytes(b"x")
    assert paths.resolve_inside(tmp_path, "", "x.png") == tmp_path / "x.png"
    assert paths.resolve_inside(tmp_path, "new", "y.png") == tmp_path / "new" / "y.png"
    with pytest.raises(ValueError, match=r"\.\."):
        paths.resolve_inside(tmp_path, "", "../x.png")


CASES: list[dict[str, Any]] = [
    {"type": "output", "filename": "a.png", "subfolder": ""},
    {"type": "output", "filename": "o.png", "subfolder": "jobs"},
    {"type": "output", "filename": "missing.png", "subfolder": ""},
    {"type": "output", "filename": "inside_link.png"},
    {"type": "output", "filename": "dangling_link.png"},
    {"type": "output", "filename": "escape.txt"},
    {"type": "output", "filename": "secret.txt", "subfolder": "linkdir"},
    {"type": "output", "filename": "../outside/secret.txt"},
    {"type": "output", "filename": "/etc/passwd"},
    {"type": "output", "filename": "jobs"},
    {"type": "output", "filename": ""},
    {"type": "output", "filename": "a\tb.png"},
    {"type": "input", "filename": "a.png", "subfolder": None},
    {"type": "models", "filename": "a.png"},
    {"filename": "a.png"},
]


def _populate(output: Path, inp: Path, outside: Path) -> None:
    for folder in (output, inp):  # from empty, so a second populate finds what the first made
        shutil.rmtree(folder)
        folder.mkdir()
    (output / "jobs").mkdir(exist_ok=True)
    for p in (output / "a.png", output / "jobs" / "o.png", output / "target.png", inp / "a.png"):
        p.write_bytes(b"x")
    (output / "inside_link.png").symlink_to(output / "target.png")
    (output / "dangling_link.png").symlink_to(output / "gone.png")
    (output / "escape.txt").symlink_to(outside / "secret.txt")
    (output / "linkdir").symlink_to(outside, target_is_directory=True)


async def test_the_standin_serves_the_same_rules(client, dirs, tmp_path: Path) -> None:
    testing = pytest.importorskip("comfy_standin.testing")
    outside = tmp_path / "outside"
    _populate(dirs["output"], dirs["input"], outside)
    ours = [(await _delete_raw(client, case))[0] for case in CASES]
    async with testing.run_standin() as s, aiohttp.ClientSession() as http:
        _populate(Path(s.output_dir), Path(s.input_dir), outside)
        theirs = []
        for case in CASES:
            async with http.post(f"{s.url}/comfy-fleet/cleanup/delete", json=case) as resp:
                theirs.append(resp.status)
    assert (outside / "secret.txt").read_text() == "keep me"
    assert dict(enumerate(theirs)) == dict(enumerate(ours)), CASES
    # The same cases as one batch: the same answer per file from both.
    _populate(dirs["output"], dirs["input"], outside)
    _, ours_batch = await _delete_raw(client, {"files": CASES})
    async with testing.run_standin() as s, aiohttp.ClientSession() as http:
        _populate(Path(s.output_dir), Path(s.input_dir), outside)
        async with http.post(f"{s.url}/comfy-fleet/cleanup/delete", json={"files": CASES}) as resp:
            assert resp.status == 200
            theirs_batch = await resp.json()
    statuses = [[r.get("status", 200) for r in b["results"]] for b in (ours_batch, theirs_batch)]
    assert statuses[0] == statuses[1] == ours, CASES


def _loaded_paths_module() -> types.ModuleType:
    """The ``paths`` module of the custom node the ``client`` fixture loaded."""
    return sys.modules[MODULE_NAME + ".paths"]


@pytest.mark.parametrize("swapped", ["fleet", "fleet/t1"])
async def test_a_parent_swapped_for_a_symlink_after_the_check_does_not_escape(
    swapped: str, client, dirs, tmp_path: Path, monkeypatch
) -> None:
    """The race, won deterministically: the name is checked while its folders are real, then a
    folder on its path becomes a symlink to a folder outside before the delete runs."""
    outside = tmp_path / "outside"
    (outside / "t1").mkdir()
    (outside / "t1" / "secret.txt").write_text("keep me")
    task = dirs["output"] / "fleet" / "t1"
    task.mkdir(parents=True)
    (task / "secret.txt").write_text("mine")
    paths_module = _loaded_paths_module()
    check = paths_module.resolve_inside

    def check_then_swap(base: Path, subfolder: str, filename: str) -> Path:
        target = check(base, subfolder, filename)  # passes: every folder is real here
        folder = dirs["output"] / swapped
        shutil.rmtree(folder)
        folder.symlink_to(outside if swapped == "fleet" else outside / "t1", target_is_directory=True)
        return target

    monkeypatch.setattr(paths_module, "resolve_inside", check_then_swap)
    status, body = await _delete(client, type="output", filename="secret.txt", subfolder="fleet/t1")
    assert (outside / "secret.txt").read_text() == "keep me"
    assert (outside / "t1" / "secret.txt").read_text() == "keep me"
    assert status == 400 and body["error"] == "path resolves outside the folder"


def test_unlink_inside_refuses_a_symlinked_parent_and_removes_a_real_file(tmp_path: Path) -> None:
    from comfyui_extension.comfy_fleet_cleanup import paths

    base = tmp_path / "output"
    (base / "fleet" / "real").mkdir(parents=True)
    (base / "fleet" / "real" / "a.png").write_bytes(b"x")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "a.png").write_text("keep me")
    (base / "fleet" / "link").symlink_to(tmp_path / "outside", target_is_directory=True)
    with pytest.raises(paths.Escaped):
        paths.unlink_inside(base, base / "fleet" / "link" / "a.png")
    assert (tmp_path / "outside" / "a.png").read_text() == "keep me"
    paths.unlink_inside(base, base / "fleet" / "real" / "a.png")
    assert not (base / "fleet" / "real" / "a.png").exists()
    with pytest.raises(FileNotFoundError):
        paths.unlink_inside(base, base / "fleet" / "real" / "a.png")
    with pytest.raises(IsADirectoryError):
        paths.unlink_inside(base, base / "fleet" / "real")
