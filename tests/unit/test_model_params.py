"""Models by URL, the pure parts: model values, manifests with `folder` and `bypass`, prompts with
and without the optional LoRA, routing to endpoints that pull and hold models, and what a pull
answer means."""

from __future__ import annotations

import copy
import hashlib
import json
import random
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from comfy_fleet import errors
from comfy_fleet.policies import routing
from comfy_fleet.prompts import model_pulls
from comfy_fleet.workflows import manifest as manifest_module, model_params, param_spec, params
from comfy_fleet.workflows import registry as workflow_registry
from comfy_standin import validation

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
SHA = hashlib.sha256(b"lora").hexdigest()
FLUX_MODELS = {
    "diffusion_models": ["flux1-dev.safetensors"],
    "vae": ["ae.safetensors"],
    "text_encoders": ["clip_l.safetensors", "t5xxl_fp8_e4m3fn.safetensors"],
}

GRAPH: dict[str, Any] = {
    "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "base.safetensors"}},
    "2": {"class_type": "LoraLoader", "inputs": {
        "lora_name": "x.safetensors", "strength_model": 1.0, "strength_clip": 1.0,
        "model": ["1", 0], "clip": ["1", 1]}},
    "3": {"class_type": "KSampler", "inputs": {"model": ["2", 0], "seed": 1}},
    "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 1], "text": "t"}},
}


def parse(params_toml: dict[str, Any], graph: dict[str, Any] | None = None) -> manifest_module.Manifest:
    return manifest_module.parse_manifest(
        {"params": params_toml}, graph or GRAPH, name="w", source="w.toml"
    )


LORA = {"node": "2", "field": "lora_name", "type": "model", "folder": "loras", "bypass": True}
STRENGTH = {"node": "2", "field": "strength_model", "type": "float", "default": 1.0}


@pytest.fixture(scope="module")
def registry() -> workflow_registry.WorkflowRegistry:
    reg, problems = workflow_registry.WorkflowRegistry.load(WORKFLOWS)
    assert problems == []
    return reg


# --- values ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["a.safetensors", "sub/dir/b.ckpt", {"url": "https://h/x", "sha256": SHA}])
def test_model_values_accepted(value: Any) -> None:
    assert param_spec.model_problem(value) is None


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("", "1 to"),
        ("../x.safetensors", "'..'"),
        ("/abs.safetensors", "relative"),
        ("a\\b.safetensors", "backslash"),
        (3, "got int"),
        ({"url": "https://h/x"}, "missing sha256"),
        ({"url": "https://h/x", "sha256": SHA, "size": 1}, "unknown key size"),
        ({"url": "https://h/x", "sha256": SHA.upper()}, "lower-case hex"),
        ({"url": "ftp://h/x", "sha256": SHA}, "http(s)"),
        ({"url": "https://h/ x", "sha256": SHA}, "whitespace"),
    ],
)
def test_model_values_refused(value: Any, words: str) -> None:
    problem = param_spec.model_problem(value)
    assert problem is not None and words in problem


def test_filename_key_and_labels() -> None:
    assert model_params.model_key(SHA) == f"models/{SHA}"
    with pytest.raises(ValueError):
        model_params.model_key("../etc")
    assert model_params.filename_for(SHA, "https://h/a/b.CKPT?x=1") == f"fleet/{SHA}.ckpt"
    assert model_params.filename_for(SHA, "https://h/download?id=3") == f"fleet/{SHA}.safetensors"
    assert model_params.shas_of_labels(["gpu", model_params.label(SHA)]) == {SHA}


# --- manifests ------------------------------------------------------------------------------------


def test_a_model_parameter_needs_a_folder_and_only_it_has_one() -> None:
    with pytest.raises(errors.ManifestInvalid, match=r"params.lora.folder: a model parameter"):
        parse({"lora": {k: v for k, v in LORA.items() if k != "folder"}})
    with pytest.raises(errors.ManifestInvalid, match=r"params.lora.folder: .* not a ComfyUI model"):
        parse({"lora": {**LORA, "folder": "custom_nodes"}})
    with pytest.raises(errors.ManifestInvalid, match=r"params.s.folder: not allowed"):
        parse({"s": {**STRENGTH, "folder": "loras"}})
    assert parse({"lora": LORA}).params["lora"].folder == "loras"


def test_bypass_is_for_optional_parameters_whose_node_passes_its_links_on() -> None:
    with pytest.raises(errors.ManifestInvalid, match=r"params.lora.bypass: only an optional"):
        parse({"lora": {**LORA, "required": True}})
    graph = copy.deepcopy(GRAPH)
    graph["3"]["inputs"]["extra"] = ["2", 2]  # LoraLoader has two linked inputs: no output 2
    with pytest.raises(errors.ManifestInvalid, match=r"uses output 2 of node '2'"):
        parse({"lora": LORA}, graph)
    with pytest.raises(errors.ManifestInvalid, match=r"bypass: must be true or false"):
        parse({"lora": {**LORA, "bypass": "yes"}})


# --- prompts --------------------------------------------------------------------------------------


def test_left_out_the_bypassed_node_is_taken_out_and_its_users_relinked() -> None:
    m = parse({"lora": LORA, "strength": STRENGTH})
    resolved = params.validate_params(m, {})
    assert resolved == {"strength": 1.0}
    prompt = params.apply_params(GRAPH, m, resolved)
    assert "2" not in prompt
    assert prompt["3"]["inputs"]["model"] == ["1", 0]
    assert prompt["4"]["inputs"]["clip"] == ["1", 1]
    assert GRAPH["3"]["inputs"]["model"] == ["2", 0]  # the graph itself is untouched


def test_given_a_model_the_node_stays_with_its_file_name() -> None:
    m = parse({"lora": LORA, "strength": STRENGTH})
    by_name = params.apply_params(GRAPH, m, params.validate_params(m, {"lora": "mine.safetensors"}))
    assert by_name["2"]["inputs"]["lora_name"] == "mine.safetensors"
    value = {"url": "https://h/l.safetensors", "sha256": SHA}
    resolved = params.validate_params(m, {"lora": value, "strength": 0.5})
    assert resolved["lora"] == value
    named = params.apply_params(GRAPH, m, resolved, model_names={"lora": f"fleet/{SHA}.safetensors"})
    assert named["2"]["inputs"] == {**GRAPH["2"]["inputs"], "lora_name": f"fleet/{SHA}.safetensors",
                                    "strength_model": 0.5}
    # Routing checks build the prompt without names: the input is left alone.
    assert params.apply_params(GRAPH, m, resolved)["2"]["inputs"]["lora_name"] == "x.safetensors"


def test_a_bad_model_value_is_a_params_error() -> None:
    m = parse({"lora": LORA})
    with pytest.raises(errors.WorkflowParamsInvalid) as caught:
        params.validate_params(m, {"lora": {"url": "https://h/x"}})
    assert caught.value.details == [
        {"param": "lora", "problem": 'a model by URL is {"url", "sha256"}: missing sha256'}
    ]


def test_the_schema_takes_a_name_or_a_url_with_its_sha256() -> None:
    schema = params.params_json_schema(parse({"lora": LORA}))
    jsonschema.Draft202012Validator.check_schema(schema)
    check = jsonschema.Draft202012Validator(schema)
    assert check.is_valid({"lora": "a.safetensors"})
    assert check.is_valid({"lora": {"url": "https://h/x", "sha256": SHA}})
    assert not check.is_valid({"lora": {"url": "https://h/x"}})
    assert not check.is_valid({"lora": {"url": "https://h/x", "sha256": "abc"}})


@pytest.mark.parametrize("name", ["text2img", "img2img"])
def test_shipped_flux_without_a_lora_sends_the_graph_it_always_sent(
    registry: workflow_registry.WorkflowRegistry, name: str
) -> None:
    wf = registry.get(name)
    before = json.loads((WORKFLOWS / f"{name}.json").read_text())
    del before["40"]
    for node in before.values():
        for key, value in node["inputs"].items():
            if value == ["40", 0]:
                node["inputs"][key] = ["12", 0]
            elif value == ["40", 1]:
                node["inputs"][key] = ["11", 0]
    given = {"text": "t", "seed": 5, **({"image": "aGk="} if name == "img2img" else {})}
    resolved = wf.validate(given)
    prompt = params.apply_params(wf.graph, wf.manifest, resolved, image_names={"image": "x.png"})
    expected = params.apply_params(before, wf.manifest, {k: v for k, v in resolved.items()
                                                         if k != "lora_strength"},
                                   image_names={"image": "x.png"})
    assert prompt == expected
    assert wf.can_run(validation.Catalogue.load(FLUX_MODELS).object_info()) == (True, None)


def test_shipped_text2img_with_a_pulled_lora_passes_comfyui_validation(
    registry: workflow_registry.WorkflowRegistry, tmp_path: Path
) -> None:
    wf = registry.get("text2img")
    resolved = wf.validate(
        {"text": "t", "lora": {"url": "https://h/l.safetensors", "sha256": SHA}, "lora_strength": 0.7},
        rng=random.Random(0).randint,
    )
    filename = f"fleet/{SHA}.safetensors"
    prompt = wf.build_prompt(resolved, task_id="t-1", model_names={"lora": filename})
    assert prompt["40"]["inputs"]["lora_name"] == filename
    assert prompt["30"]["inputs"]["model"] == ["40", 0]
    catalogue = validation.Catalogue.load({**FLUX_MODELS, "loras": [filename]})
    result = validation.validate_prompt(prompt, catalogue, tmp_path)
    assert result.ok, result.error_body


# --- routing --------------------------------------------------------------------------------------


def test_tasks_with_models_go_only_where_models_can_be_pulled_preferably_to_holders() -> None:
    labels = [model_params.label(SHA)]
    rng = random.Random(0)

    def pick(*eps: routing.EndpointLoad) -> str | None:
        chosen = routing.pick_endpoint(eps, 2, rng, labels=labels)
        return chosen.name if chosen else None

    no_route = routing.EndpointLoad("a", connected=True, models_route=False)
    unknown = routing.EndpointLoad("u", connected=True)
    assert pick(no_route, unknown) is None
    cold = routing.EndpointLoad("c", connected=True, models_route=True)
    holder = routing.EndpointLoad("h", connected=True, models_route=True, inflight=1,
                                  models=frozenset({SHA}))
    assert pick(no_route, cold, holder) == "h"  # busier, but it holds the model
    full = routing.EndpointLoad("h", connected=True, models_route=True, inflight=2,
                                models=frozenset({SHA}))
    assert pick(cold, full) == "c"  # a holder without room does not hold the task back
    # Tasks without models route as before (least loaded).
    assert routing.pick_endpoint([holder, cold], 2, rng).name == "c"


# --- pull answers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "verdict", "code"),
    [
        (200, {"fetched": True, "size": 3, "seconds": 0.5, "evicted": [{"sha256": "e"}]},
         model_pulls.Verdict.PULLED, ""),
        (422, {"error": {"code": "model_checksum_mismatch", "message": "m"}},
         model_pulls.Verdict.FAIL, "model_checksum_mismatch"),
        (507, {"error": {"code": "model_too_large", "message": "m"}},
         model_pulls.Verdict.FAIL, "model_too_large"),
        (400, {"error": {"code": "invalid_filename", "message": "m"}},
         model_pulls.Verdict.FAIL, "model_fetch_failed"),
        (507, {"error": {"code": "model_cache_full", "message": "m"}},
         model_pulls.Verdict.REQUEUE, "model_cache_full"),
        (502, {"error": {"code": "model_fetch_failed", "message": "m"}},
         model_pulls.Verdict.REQUEUE, "model_fetch_failed"),
        (503, {"error": {"code": "not_configured", "message": "m"}},
         model_pulls.Verdict.NO_ROUTE, "not_configured"),
        (404, None, model_pulls.Verdict.NO_ROUTE, "http_404"),
    ],
)
def test_what_a_pull_answer_means(status: int, body: Any, verdict: Any, code: str) -> None:
    outcome = model_pulls.judge(status, body)
    assert (outcome.verdict, outcome.code) == (verdict, code)
    if verdict is model_pulls.Verdict.PULLED:
        assert outcome.fetched and outcome.size == 3 and outcome.evicted == ("e",)


def test_a_pull_problem_survives_pickling() -> None:
    import pickle

    outcome = model_pulls.judge(507, {"error": {"code": "model_cache_full", "message": "m"}})
    exc = model_pulls.PullProblem("x", {**outcome.__dict__, "verdict": outcome.verdict.value})
    assert pickle.loads(pickle.dumps(exc)).outcome == outcome
