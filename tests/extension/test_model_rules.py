"""The model routes' pure rules: the budget's choice, the bucket URL rule, the configuration."""

from __future__ import annotations

import pickle

import pytest

from comfyui_extension.comfy_fleet_cleanup import model_cache, model_rules


def _entry(name: str, size: int, last_used: float, sha: str = "") -> model_cache.Entry:
    return model_cache.Entry(sha or name * 64, "loras", f"{name}.safetensors", "/m/loras", size,
                             last_used, last_used)


def test_nothing_goes_while_the_budget_has_room() -> None:
    entries = [_entry("a", 400, 1), _entry("b", 400, 2)]
    assert model_cache.choose_evictions(entries, 1000, 200, set()) == []


def test_least_recently_used_go_first_and_only_as_many_as_needed() -> None:
    a, b, c = _entry("a", 400, 3), _entry("b", 400, 1), _entry("c", 400, 2)
    assert model_cache.choose_evictions([a, b, c], 1000, 300, set()) == [b, c]
    assert model_cache.choose_evictions([a, b, c], 1000, 100, set()) == [b]


def test_models_in_use_are_skipped_and_reservations_count() -> None:
    a, b, c = _entry("a", 400, 1), _entry("b", 400, 2), _entry("c", 400, 3)
    assert model_cache.choose_evictions([a, b, c], 1200, 300, {a.key}) == [b]
    assert model_cache.choose_evictions([a, b, c], 1200, 100, {a.key}, reserved=400) == [b, c]


def test_no_room_when_models_in_use_fill_the_budget() -> None:
    a, b = _entry("a", 600, 1), _entry("b", 300, 2)
    with pytest.raises(model_cache.NoRoom) as info:
        model_cache.choose_evictions([a, b], 1000, 500, {a.key})
    assert info.value.details == {"size": 500, "cache_bytes": 1000, "in_use_bytes": 600}


def test_names_in_prompts_reads_string_inputs_of_graphs_only() -> None:
    prompts = [
        {"1": {"class_type": "LoraLoader", "inputs": {"lora_name": "fleet/x.safetensors",
                                                       "model": ["4", 0], "strength": 1.0}}},
        "not a graph",
        {"2": "not a node", "3": {"inputs": "not inputs"}},
    ]
    assert model_cache.names_in_prompts(prompts) == {"fleet/x.safetensors"}


def test_in_use_by_name_either_separator_or_by_sha() -> None:
    a, b, c = _entry("a", 1, 1), _entry("b", 1, 1), _entry("c", 1, 1)
    a = model_cache.Entry(a.sha256, "loras", "fleet/a.safetensors", a.base, 1, 1, 1)
    assert model_cache.in_use([a, b, c], {"fleet\\a.safetensors"}, [c.sha256]) == {a.key, c.key}


def test_index_entries_that_do_not_parse_are_forgotten() -> None:
    good = _entry("a", 10, 1)
    data = model_cache.to_json([good])
    data["models"] += [{"sha256": "x"}, {**data["models"][0], "size": -1}, "junk"]
    assert model_cache.from_json(data) == [good]
    assert model_cache.from_json(None) == [] and model_cache.from_json({"models": 3}) == []


BUCKET = model_rules.parse_bucket("http://127.0.0.1:9000/fleet-bucket/")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9000/fleet-bucket/models/abc",
        "http://127.0.0.1:9000/fleet-bucket/models/abc?X-Amz-Credential=a%2Fb&X-Amz-Signature=f",
        "HTTP://127.0.0.1:9000/fleet-bucket/a%20b",
    ],
)
def test_urls_of_the_bucket_pass_unchanged(url: str) -> None:
    assert model_rules.check_url(BUCKET, url) == url


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9001/fleet-bucket/models/abc",
        "http://127.0.0.2:9000/fleet-bucket/models/abc",
        "http://127.0.0.1:9000/fleet-bucket2/models/abc",
        "http://127.0.0.1:9000/fleet-bucket/./../x",
        "http://127.0.0.1:9000/fleet-bucket/%2E%2E/x",
        "http://127.0.0.1:9000/fleet-bucket/a%5cb",
        "http://127.0.0.1:9000@evil.example/fleet-bucket/x",
        "http://127.0.0.1:bad/fleet-bucket/x",
        "http://127.0.0.1:9000/fleet-bucket/x\r\nHost: evil",
    ],
)
def test_urls_elsewhere_are_forbidden(url: str) -> None:
    with pytest.raises(model_rules.ModelError) as info:
        model_rules.check_url(BUCKET, url)
    assert info.value.status == 403 and info.value.body()["error"]["code"] == "url_forbidden"


def test_ipv6_buckets() -> None:
    bucket = model_rules.parse_bucket("http://[::1]:9000/b")
    assert bucket.url == "http://[::1]:9000/b"
    assert model_rules.check_url(bucket, "http://[::1]:9000/b/models/x")


def test_default_ports_and_virtual_hosted_buckets() -> None:
    bucket = model_rules.parse_bucket("https://models.s3.example.com")
    assert bucket.url == "https://models.s3.example.com:443"
    assert model_rules.check_url(bucket, "https://models.s3.example.com:443/k/x")
    assert model_rules.check_url(bucket, "https://Models.S3.example.com/k/x")
    with pytest.raises(model_rules.ModelError):
        model_rules.check_url(bucket, "http://models.s3.example.com/k/x")


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({}, "COMFY_FLEET_MODEL_BUCKET_URL is not set"),
        ({"COMFY_FLEET_MODEL_BUCKET_URL": "s3://bucket"}, "must be http(s)://"),
        ({"COMFY_FLEET_MODEL_BUCKET_URL": "http://h/b?x=1"}, "no user, query"),
        ({"COMFY_FLEET_MODEL_BUCKET_URL": "http://h/b", "COMFY_FLEET_MODEL_CACHE_BYTES": "0"},
         "COMFY_FLEET_MODEL_CACHE_BYTES must be a positive"),
        ({"COMFY_FLEET_MODEL_BUCKET_URL": "http://h/b", "COMFY_FLEET_MODEL_CACHE_BYTES": "lots"},
         "invalid literal"),
    ],
)
def test_a_bad_configuration_names_its_problem(env: dict[str, str], problem: str) -> None:
    config = model_rules.config_from_env(env)
    assert config.bucket is None and problem in (config.problem or "")


def test_configuration_from_the_environment() -> None:
    config = model_rules.config_from_env({
        "COMFY_FLEET_MODEL_BUCKET_URL": "http://minio:9000/fleet",
        "COMFY_FLEET_MODEL_CACHE_BYTES": "1000",
        "COMFY_FLEET_MODEL_READ_TIMEOUT_S": "5",
    })
    assert config == model_rules.Config(model_rules.Bucket("http", "minio", 9000, "/fleet"),
                                        1000, 5.0, None)


def test_model_errors_survive_pickling() -> None:
    error = model_rules.ModelError(422, "model_checksum_mismatch", "m", {"expected": "a"})
    again = pickle.loads(pickle.dumps(error))
    assert again.status == 422 and again.body() == error.body()
