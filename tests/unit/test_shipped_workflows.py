"""The workflows shipped in workflows/: they load, and their prompts pass ComfyUI's validation.

The catalogue is the recorded ``GET /object_info`` of a real ComfyUI 0.3.64 (no model files), as
the stand-in serves it; ``comfy_standin.validation`` is its port of ComfyUI's prompt validation.
"""

from __future__ import annotations

import base64
import io
import random
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from PIL import Image

from comfy_standin import validation
from comfy_fleet.workflows import graph, registry as workflow_registry

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
MODEL_FREE = ("invert", "resize", "solid", "solid_video")
FLUX = ("img2img", "text2img")
FLUX_MODELS = {
    "diffusion_models": ["flux1-dev.safetensors"],
    "vae": ["ae.safetensors"],
    "text_encoders": ["clip_l.safetensors", "t5xxl_fp8_e4m3fn.safetensors"],
}


def png_b64() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (10, 200, 30)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


EXAMPLES: dict[str, dict[str, Any]] = {
    "solid": {"width": 64, "height": 48, "color": 16711680, "batch_size": 2},
    "solid_video": {"width": 32, "height": 16, "color": 255, "frames": 3, "fps": 4.0},
    "invert": {"image": png_b64()},
    "resize": {"image": png_b64(), "width": 16, "upscale_method": "lanczos"},
    "text2img": {"text": 'a "cat" {in} a hat', "seed": 123},
    "img2img": {"text": "the same, at night", "image": png_b64()},
}


@pytest.fixture(scope="module")
def registry() -> workflow_registry.WorkflowRegistry:
    reg, problems = workflow_registry.WorkflowRegistry.load(WORKFLOWS)
    assert [p.message for p in problems] == []
    return reg


def test_all_shipped_workflows_load(registry: workflow_registry.WorkflowRegistry) -> None:
    assert registry.names() == sorted(MODEL_FREE + FLUX)
    for wf in registry.workflows():
        assert wf.manifest.description
        jsonschema.Draft202012Validator.check_schema(wf.describe()["params"])


def test_flux_manifests_map_text_image_and_seed(
    registry: workflow_registry.WorkflowRegistry,
) -> None:
    t2i, i2i = registry.get("text2img"), registry.get("img2img")
    assert {n: (p.node, p.field, p.type) for n, p in t2i.manifest.params.items()} == {
        "text": ("6", "text", "string"),
        "seed": ("25", "noise_seed", "seed"),
        "lora": ("40", "lora_name", "model"),
        "lora_strength": ("40", "strength_model", "float"),
    }
    assert {n: (p.node, p.field, p.type) for n, p in i2i.manifest.params.items()} == {
        "text": ("6", "text", "string"),
        "image": ("82", "image", "image"),
        "seed": ("50", "noise_seed", "seed"),
        "lora": ("40", "lora_name", "model"),
        "lora_strength": ("40", "strength_model", "float"),
    }
    # the prototype graphs are shipped unchanged: their placeholders are still in place
    assert t2i.graph["6"]["inputs"]["text"] == "<text>"
    assert i2i.graph["82"]["inputs"]["image"] == "<image>"


@pytest.mark.parametrize("name", MODEL_FREE)
def test_model_free_runs_on_the_bare_catalogue(
    registry: workflow_registry.WorkflowRegistry, name: str
) -> None:
    info = validation.Catalogue.load().object_info()
    wf = registry.get(name)
    assert wf.required_models(info) == set()
    assert wf.can_run(info) == (True, None)
    assert graph.output_nodes(wf.graph, info) != []


@pytest.mark.parametrize("name", FLUX)
def test_flux_needs_its_models(registry: workflow_registry.WorkflowRegistry, name: str) -> None:
    wf = registry.get(name)
    wanted = {f for files in FLUX_MODELS.values() for f in files}
    assert wf.required_models() == wanted
    ok, reason = wf.can_run(validation.Catalogue.load().object_info())
    assert not ok and reason is not None
    for model in wanted:
        assert model in reason
    assert wf.can_run(validation.Catalogue.load(FLUX_MODELS).object_info()) == (True, None)


@pytest.mark.parametrize("name", MODEL_FREE + FLUX)
def test_built_prompt_passes_comfyui_validation(
    registry: workflow_registry.WorkflowRegistry, name: str, tmp_path: Path
) -> None:
    wf = registry.get(name)
    resolved = wf.validate(EXAMPLES[name], rng=random.Random(0).randint)
    image_names = {}
    for pname, spec in wf.manifest.params.items():
        if spec.type == "image":
            upload = f"fleet-task-1-{pname}.png"
            (tmp_path / upload).write_bytes(base64.b64decode(resolved[pname]))
            image_names[pname] = upload
    prompt = wf.build_prompt(resolved, task_id="task-1", image_names=image_names)

    catalogue = validation.Catalogue.load(FLUX_MODELS if name in FLUX else None)
    result = validation.validate_prompt(prompt, catalogue, tmp_path)
    assert result.ok, result.error_body
    assert result.outputs_to_execute == graph.output_nodes(prompt, catalogue.object_info())
    for node_id in result.outputs_to_execute:
        assert prompt[node_id]["inputs"]["filename_prefix"].startswith("fleet/task-1/")
    for pname, value in EXAMPLES[name].items():
        spec = wf.manifest.params[pname]
        expected = image_names.get(pname, value)
        assert prompt[spec.node]["inputs"][spec.field] == expected
