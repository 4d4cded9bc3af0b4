"""Pure parts of the stand-in, without a server: queue and history rules, knobs, naming,
image maths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from comfy_standin import files, images
from comfy_standin.__main__ import parse_models
from comfy_standin.knobs import FailRule, Knobs
from comfy_standin.prompt_queue import PromptQueue
from comfy_standin.testing import format_models


def _item(number: float, pid: str) -> list:
    return [number, pid, {}, {"client_id": "c", "api_key_comfy_org": "secret"}, ["2"]]


def test_queue_runs_in_heap_order_and_reports_every_change() -> None:
    changes: list[int] = []
    q = PromptQueue(lambda: changes.append(q.queue_remaining()))
    for number, pid in ((2, "b"), (-3, "f"), (0.5, "n"), (2, "a")):
        q.put(_item(number, pid))
    order = []
    while (got := q.get()) is not None:
        order.append(got[0][1])
        q.task_done(got[1], {}, {}, {"status_str": "success", "completed": True, "messages": []})
    assert order == ["f", "n", "a", "b"]
    # put x4, then get (unchanged) and task_done (-1) per prompt
    assert changes == [1, 2, 3, 4, 4, 3, 3, 2, 2, 1, 1, 0]
    assert q.history["a"]["prompt"][3] == {"client_id": "c"}  # sensitive keys stripped


def test_history_max_items_and_offset_as_comfyui() -> None:
    q = PromptQueue(lambda: None)
    for pid in "abcde":
        q.put(_item(0, pid))
        got = q.get()
        assert got is not None
        q.task_done(got[1], {}, {}, {})
    assert list(q.get_history(max_items=2)) == ["d", "e"]
    assert list(q.get_history(max_items=2, offset=1)) == ["b", "c"]
    assert list(q.get_history()) == list("abcde")
    assert q.get_history("zz") == {}
    q.put(_item(0, "x"))
    q.put(_item(1, "y"))
    assert q.delete("y") and not q.delete("nope")
    assert [it[1] for it in q.get_current_queue()[1]] == ["x"]


def test_fail_rules_are_consumed_by_class_or_node_id() -> None:
    k = Knobs()
    k.update({"fail": [{"node": "KSampler", "count": 2}, {"node": "7"}]})
    assert isinstance(k.fail[0], FailRule)
    assert k.take_failure("3", "KSampler") is not None
    assert k.take_failure("7", "SaveImage") is not None
    assert k.take_failure("3", "KSampler") is not None
    assert k.take_failure("3", "KSampler") is None and k.fail == []
    with pytest.raises(KeyError):
        k.update({"no_such_knob": 1})


async def test_a_knob_assignment_wakes_its_waiters_from_any_thread() -> None:
    import asyncio
    import threading

    knobs = Knobs(stall_worker=True)
    waiter = asyncio.create_task(knobs.changed(timeout_s=30))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    threading.Thread(target=setattr, args=(knobs, "stall_worker", False)).start()
    await asyncio.wait_for(waiter, 5)  # woken by the assignment, not by its 30 s timeout
    assert knobs.stall_worker is False
    assert "_waiters" not in knobs.to_json() and knobs == Knobs()  # not a knob itself


def test_models_syntax_round_trips() -> None:
    models = {"checkpoints": ["a.safetensors", "b.safetensors"], "unet": ["f.safetensors"]}
    assert parse_models(format_models(models)) == models
    assert parse_models("") == {}


def test_save_path_continues_the_counter_and_keeps_prefix_folders(tmp_path: Path) -> None:
    base = str(tmp_path)
    (tmp_path / "job").mkdir()
    for name in ("img_00003_.png", "img_00012_.png", "imgx_00099_.png", "img_.png"):
        (tmp_path / "job" / name).write_bytes(b"")
    folder, name, counter, sub = files.save_path("job/img", base)
    assert (name, counter, sub) == ("img", 13, "job") and folder == str(tmp_path / "job")
    with pytest.raises(files.SavePathError):
        files.save_path("../escape", base)
    assert files.save_path("new/x", base)[2] == 1


def test_view_and_cleanup_path_rules(tmp_path: Path) -> None:
    d = files.Dirs.create(tmp_path / "i", tmp_path / "o", tmp_path / "t")
    (tmp_path / "o" / "a.png").write_bytes(b"x")
    assert files.resolve_view(d, {"filename": "a.png"}).status == 200
    assert files.resolve_view(d, {"filename": "a.png", "subfolder": ".."}).status == 403
    assert files.resolve_view(d, {"filename": "a.png", "type": "models"}).status == 400
    assert files.resolve_view(d, {"filename": "a.png [input]"}).status == 404
    with pytest.raises(files.CleanupError) as err:
        files.cleanup_target(d, "output", "sub/../a.png", "")
    assert err.value.status == 400
    assert files.cleanup_target(d, "output", "a.png", None) == tmp_path / "o" / "a.png"


def test_image_maths_match_torch_float32() -> None:
    img = images.empty_image(4, 3, 2, 0xFF8000)
    assert img.shape == (2, 3, 4, 3) and img.dtype == np.float32
    assert images.to_pil(img[0]).getpixel((0, 0)) == (255, 128, 0)
    assert images.to_pil(images.invert(images.empty_image(1, 1, 1, 0x000080))[0]).getpixel(
        (0, 0)
    ) == (255, 255, 126)
    with pytest.raises(images.TorchRuntimeError, match=r"padding \(3, 3\) at dimension 2"):
        images.blur(img, 3, 1.0)  # 4 wide passes, 3 high does not
    with pytest.raises(images.TorchRuntimeError, match=r"padding \(4, 4\) at dimension 3"):
        images.blur(img, 4, 1.0)
    flat = images.blur(images.empty_image(16, 16, 1, 0x808080), 2, 1.0)
    assert np.allclose(flat, 128 / 255, atol=1e-5)
    assert images.scale(img, "bilinear", 8, 0, "disabled").shape == (2, 6, 8, 3)
    assert images.tensor_repr(np.zeros((1, 2), dtype=np.float32)) == "tensor([[0., 0.]])"
