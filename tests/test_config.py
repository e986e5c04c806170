"""Configuration: built-in defaults, the price catalog, serving pools and validation errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from hybridserve.config import Scenario, default_catalog, default_profile, load_scenario
from hybridserve.config_base import ConfigError, read_yaml_mapping

CPU_TYPES = [
    "c5.large", "c5.xlarge", "c5.2xlarge", "c5.4xlarge",
    "c6i.large", "c6i.xlarge", "c6i.2xlarge", "c6i.4xlarge",
    "c7i.large", "c7i.xlarge", "c7i.2xlarge", "c7i.4xlarge",
    "m5.large", "m5.xlarge", "m5.2xlarge",
]  # fmt: skip
GPU_TYPES = ["g4dn.xlarge", "g5.xlarge", "inf2.xlarge"]


def write_yaml(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def config_error(path: Path) -> str:
    """Load `path` (and its pools), expecting a ConfigError; return its message."""
    with pytest.raises(ConfigError) as info:
        load_scenario(path).pools  # noqa: B018 - pools are validated lazily
    return str(info.value)


# --------------------------------------------------------------------------------------------
# defaults and the catalog
# --------------------------------------------------------------------------------------------


def test_defaults_load() -> None:
    sc = load_scenario()
    assert isinstance(sc, Scenario)
    assert sc.slo.latency_ms == 300.0
    assert sc.slo.target == 0.99
    assert sc.control_interval_s == 60
    assert sc.lambda_.memory_mb == 2048
    assert sc.lambda_.arch == "x86_64"
    assert sc.lambda_.bill_init is True
    assert sc.markets == ["on_demand"]
    assert sc.instance_types == CPU_TYPES + GPU_TYPES


@pytest.mark.parametrize("name", CPU_TYPES + GPU_TYPES)
def test_catalog_has_every_type_with_positive_prices(name: str) -> None:
    cat = default_catalog()
    assert name in cat.instances
    it = cat.instances[name]
    assert it.on_demand_usd_h > 0
    assert it.price_usd_h("on_demand") == it.on_demand_usd_h
    assert it.vcpus > 0
    assert it.family == name.split(".")[0]
    assert (it.gpus > 0) == (name in GPU_TYPES)


def test_catalog_provenance() -> None:
    cat = default_catalog()
    assert cat.region == "us-east-1"
    assert isinstance(cat.prices_date, str)
    assert cat.prices_date.strip()
    assert isinstance(cat.source, str)
    assert cat.source.strip()


def test_catalog_lambda_prices_both_architectures() -> None:
    cat = default_catalog()
    x86, arm = cat.lambda_["x86_64"], cat.lambda_["arm64"]
    # AWS us-east-1 list prices: $0.0000166667 and $0.0000133334 per GB-s, $0.20 per 1M requests
    assert x86.usd_per_gb_s == pytest.approx(0.0000166667, rel=1e-9)
    assert arm.usd_per_gb_s == pytest.approx(0.0000133334, rel=1e-9)
    assert x86.usd_per_request == pytest.approx(0.2e-6, rel=1e-9)
    assert arm.usd_per_request == pytest.approx(0.2e-6, rel=1e-9)
    assert arm.usd_per_gb_s < x86.usd_per_gb_s


def test_scenario_lambda_pricing_follows_arch() -> None:
    cat = default_catalog()
    assert load_scenario().lambda_pricing == cat.lambda_["x86_64"]
    assert load_scenario(**{"lambda": {"arch": "arm64"}}).lambda_pricing == cat.lambda_["arm64"]


def test_spot_price_missing_is_config_error() -> None:
    it = default_catalog().instances["c5.large"].model_copy(update={"spot_usd_h": None})
    with pytest.raises(ConfigError, match="spot"):
        it.price_usd_h("spot")


# --------------------------------------------------------------------------------------------
# serving pools
# --------------------------------------------------------------------------------------------


def test_default_pools_exclude_gpu_types_without_a_measured_profile() -> None:
    sc = load_scenario()
    assert {g.source for g in default_profile().gpu_profiles.values()} <= {"published"}
    types = [p.instance_type for p in sc.pools]
    assert sorted(types) == sorted(CPU_TYPES)
    assert not set(types) & set(GPU_TYPES)
    assert all(p.market == "on_demand" for p in sc.pools)


def test_every_pool_latency_fits_the_batch_budget() -> None:
    for over in ({}, {"slo": {"latency_ms": 100}}, {"batch_latency_fraction": 0.9}):
        sc = load_scenario(**over)
        budget = sc.batch_latency_fraction * sc.slo.latency_s
        assert sc.pools
        for p in sc.pools:
            assert p.latency_s <= budget + 1e-12, (over, p)
            assert p.capacity_rps > 0
            assert p.price_usd_s > 0


def test_default_pool_operating_point_by_hand() -> None:
    """Budget 0.5 x 300 ms = 150 ms. Measured profile: batch 1 11.65 ms (85.8/s), 2 21.22 ms
    (94.3/s), 4 40.82 ms (98.0/s), 8 84.04 ms (95.2/s), 16 195.84 ms (over budget): batch 4
    has the best throughput that fits."""
    sc = load_scenario()
    pools = {p.instance_type: p for p in sc.pools}
    small = pools["c5.large"]
    assert small.batch == 4
    assert small.latency_s == pytest.approx(0.04082)
    assert small.workers == 1  # 2 vCPUs / 2 vCPUs per worker
    assert small.capacity_rps == pytest.approx(4 / 0.04082)
    assert small.price_usd_s == pytest.approx(0.085 / 3600)
    big = pools["c5.4xlarge"]
    assert big.workers == 8
    assert big.capacity_rps == pytest.approx(8 * 4 / 0.04082)


def test_gpu_type_eligible_with_a_profile() -> None:
    sc = load_scenario(
        model={"gpu_profiles": {"g4dn.xlarge": {"batch_ms": {1: 5.0, 16: 40.0}, "provenance": "t"}}}
    )
    pools = {p.instance_type: p for p in sc.pools}
    assert "g4dn.xlarge" in pools
    assert "g5.xlarge" not in pools
    assert pools["g4dn.xlarge"].batch == 16
    assert pools["g4dn.xlarge"].capacity_rps == pytest.approx(16 / 0.040)
    assert pools["g4dn.xlarge"].launch_delay_s == 180


def test_spot_market_adds_pools() -> None:
    sc = load_scenario(markets=["on_demand", "spot"])
    keys = {p.key for p in sc.pools}
    assert "c5.large/spot" in keys
    assert "c5.large/on_demand" in keys
    spot = next(p for p in sc.pools if p.key == "c5.large/spot")
    assert spot.price_usd_s == pytest.approx(0.034 / 3600)


# --------------------------------------------------------------------------------------------
# validation errors name the file and the field
# --------------------------------------------------------------------------------------------


def test_bad_slo_target_names_file_and_field(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "bad-target.yaml", {"slo": {"target": 1.5}})
    msg = config_error(path)
    assert str(path) in msg
    assert "slo.target" in msg
    assert "1.5" in msg


def test_bad_lambda_memory_names_file_and_field(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "bad-memory.yaml", {"lambda": {"memory_mb": 64}})
    msg = config_error(path)
    assert str(path) in msg
    assert "lambda.memory_mb" in msg
    assert "128" in msg  # what is allowed


def test_unknown_field_names_file_and_field(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "typo.yaml", {"slo": {"latncy_ms": 100}})
    msg = config_error(path)
    assert str(path) in msg
    assert "slo.latncy_ms" in msg


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"lambda": {"memroy_mb": 2048}}, "lambda.memroy_mb"),
        ({"planner": {"lambda_level": 3}}, "planner.lambda_level"),
        ({"reactive": {"cooldown_s": -1}}, "reactive.cooldown_s"),
        ({"control_interval_s": 0}, "control_interval_s"),
        ({"markets": ["reserved"]}, "markets.0"),
        ({"lambda": {"arch": "ppc64"}}, "lambda.arch"),
    ],
)
def test_nested_field_errors_name_the_path(tmp_path: Path, data: dict, field: str) -> None:
    path = write_yaml(tmp_path / "bad.yaml", data)
    msg = config_error(path)
    assert str(path) in msg
    assert f"field {field}:" in msg


def test_unknown_top_level_field(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "typo-top.yaml", {"horizon_stepz": 3})
    msg = config_error(path)
    assert str(path) in msg
    assert "horizon_stepz" in msg


def test_unknown_instance_type_names_file_field_and_type(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "types.yaml", {"instance_types": ["c5.large", "x9.huge"]})
    msg = config_error(path)
    assert str(path) in msg
    assert "instance_types" in msg
    assert "x9.huge" in msg
    assert "c5.large" in msg  # the allowed names are listed


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("slo:\n  latency_ms: 100\n bad: [\n")
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "line 3" in msg


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("name: a\nname: b\n", "line 2: not valid YAML (duplicate key 'name', first on line 1)"),
        ("lambda:\n  memory_mb: 1024\n  arch: arm64\n  memory_mb: 2048\n", "line 4:"),
    ],
)
def test_duplicate_key_names_file_line_and_key(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    msg = config_error(path)
    assert msg.startswith(f"{path}: ") and where in msg


def test_yaml_merge_key_may_be_overridden(tmp_path: Path) -> None:
    path = tmp_path / "merge.yaml"
    path.write_text("x: &b {memory_mb: 1024}\ny:\n  <<: *b\n  memory_mb: 2048\n")
    assert read_yaml_mapping(path, "x")["y"] == {"memory_mb": 2048}


def test_duplicate_key_in_catalog_file_names_both_files(tmp_path: Path) -> None:
    (tmp_path / "cat.yaml").write_text("region: a\nregion: b\n")
    path = write_yaml(tmp_path / "s.yaml", {"catalog": "cat.yaml"})
    msg = config_error(path)
    assert f"{path}: field catalog: {tmp_path / 'cat.yaml'}: line 2:" in msg
    assert "duplicate key 'region'" in msg


def test_malformed_catalog_file_names_its_line(tmp_path: Path) -> None:
    # used to be a yaml traceback
    (tmp_path / "cat.yaml").write_text("region: [us\n  x: :\n")
    path = write_yaml(tmp_path / "s.yaml", {"catalog": "cat.yaml"})
    msg = config_error(path)
    assert f"{path}: field catalog: {tmp_path / 'cat.yaml'}: line 2: not valid YAML" in msg
    (tmp_path / "cat.yaml").write_text("")
    assert "cat.yaml is empty" in config_error(path)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("lambda:\n  keep_alive_s: .inf\n", "lambda.keep_alive_s"),
        ("slo:\n  latency_ms: .nan\n", "slo.latency_ms"),
        ("model:\n  reference: {vcpus: 1, threads: 1, batch_ms: {1: .nan}}\n", "model.reference.batch_ms.1"),
        ("catalog:\n  instances:\n    c5.large: {on_demand_usd_h: .inf}\n", "catalog.instances.c5.large.on_demand_usd_h"),
        ("catalog:\n  lambda:\n    x86_64: {usd_per_gb_s: .inf}\n", "catalog.lambda.x86_64.usd_per_gb_s"),
        ("spot:\n  notice_s: .nan\n", "spot.notice_s"),
    ],
)  # fmt: skip
def test_non_finite_floats_name_the_field(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "nonfinite.yaml"
    path.write_text(text)
    msg = config_error(path)
    assert f"{path}: field {field}: Input should be a finite number" in msg


def test_keep_alive_is_bounded(tmp_path: Path) -> None:
    # 1e12 s used to allocate terabytes in the replay's keep-alive window
    path = write_yaml(tmp_path / "s.yaml", {"lambda": {"keep_alive_s": 1e12}})
    assert "field lambda.keep_alive_s: Input should be less than or equal to 86400" in config_error(
        path
    )


def test_missing_file_is_config_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    assert str(path) in str(info.value)


def test_top_level_must_be_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    assert str(path) in str(info.value)


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_scenario(path) == load_scenario()


def test_scenario_file_overrides_and_kwargs_win(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "s.yaml", {"slo": {"latency_ms": 200}, "horizon_steps": 7})
    sc = load_scenario(path)
    assert sc.slo.latency_ms == 200
    assert sc.slo.target == 0.99  # untouched field of a merged section keeps its default
    assert sc.horizon_steps == 7
    assert load_scenario(path, horizon_steps=9).horizon_steps == 9


# --------------------------------------------------------------------------------------------
# catalog / model from a file relative to the scenario
# --------------------------------------------------------------------------------------------


def test_catalog_path_relative_to_scenario(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cat = default_catalog().model_dump(by_alias=True)
    cat["region"] = "eu-test-1"
    cat["instances"]["c5.large"]["on_demand_usd_h"] = 0.5
    sub = tmp_path / "scen"
    sub.mkdir()
    write_yaml(sub / "other.yaml", cat)
    path = write_yaml(sub / "s.yaml", {"catalog": "other.yaml"})
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative to the scenario file, not the working directory
    sc = load_scenario(path)
    assert sc.catalog.region == "eu-test-1"
    assert sc.catalog.instances["c5.large"].on_demand_usd_h == 0.5
    small = next(p for p in sc.pools if p.instance_type == "c5.large")
    assert small.price_usd_s == pytest.approx(0.5 / 3600)


def test_catalog_path_missing_names_field(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "s.yaml", {"catalog": "missing.yaml"})
    msg = config_error(path)
    assert str(path) in msg
    assert "catalog" in msg
    assert "missing.yaml" in msg


def test_model_path_relative_to_scenario(tmp_path: Path) -> None:
    write_yaml(tmp_path / "m.yaml", {"name": "other-model", "lambda": {"cold_start_s": 3.0}})
    path = write_yaml(tmp_path / "s.yaml", {"model": "m.yaml"})
    sc = load_scenario(path)
    assert sc.model.name == "other-model"
    assert sc.model.lambda_.cold_start_s == 3.0
    assert sc.model.lambda_.invoke_overhead_ms == 8.0  # merged over the built-in profile
    assert sc.model.reference == default_profile().reference


# --------------------------------------------------------------------------------------------
# an SLO too tight for any batch
# --------------------------------------------------------------------------------------------


def test_slo_too_tight_raises_mentioning_slo(tmp_path: Path) -> None:
    # budget 0.5 x 20 ms = 10 ms < the batch-1 time of 15 ms: nothing can serve
    path = write_yaml(tmp_path / "tight.yaml", {"slo": {"latency_ms": 20}})
    msg = config_error(path)
    assert "SLO" in msg
    assert "20" in msg


def test_slo_too_tight_is_reported_at_load_with_file_and_field(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "tight.yaml", {"slo": {"latency_ms": 20}})
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    assert str(path) in str(info.value)
    assert "slo.latency_ms" in str(info.value)


def test_slo_just_fits_batch_one() -> None:
    sc = load_scenario(slo={"latency_ms": 23.3})  # budget exactly 11.65 ms = batch 1
    assert sc.pools
    assert all(p.batch == 1 for p in sc.pools)
    assert all(math.isclose(p.latency_s, 0.01165) for p in sc.pools)


def test_instance_types_plan_with_the_profile_of_their_cpu_isa():
    """int8 on AVX-512 without VNNI is not the speed of a VNNI type, and the reverse."""
    slow = {"vcpus": 2, "threads": 2, "batch_ms": {1: 40.0, 2: 75.0, 4: 143.0}, "isa": "avx512bw"}
    fast = {"vcpus": 2, "threads": 2, "batch_ms": {1: 11.6, 2: 21.2, 4: 40.8}, "isa": "avx512_vnni"}
    sc = load_scenario(
        instance_types=["c6i.large", "c5.large", "g5.xlarge"],
        model={"reference": fast, "isa_profiles": {"avx512bw": slow}},
    )
    cap = {p.instance_type: p.capacity_rps for p in sc.pools}
    assert cap["c6i.large"] == pytest.approx(4 / 0.0408)  # its own ISA: the reference
    assert cap["c5.large"] == pytest.approx(4 / 0.143)  # avx512bw: the profile measured there
    assert sc.profile_warnings == []  # g5 is a GPU type without a GPU profile: not eligible
    only_ref = load_scenario(
        instance_types=["c6i.large", "c5.large", "m5.large"], model={"reference": fast}
    )
    assert only_ref.profile_warnings == [
        "c5.large, m5.large run avx512bw CPUs but plan with a profile measured on avx512_vnni; "
        "run `hybridserve profile` on one and add it under model.isa_profiles.avx512bw"
    ]


def test_arm64_lambda_uses_an_arm64_profile_when_there_is_one():
    from hybridserve.config import lambda_service_s

    arm = {"vcpus": 2, "threads": 2, "batch_ms": {1: 30.0}, "isa": "arm64_dotprod"}
    x86 = load_scenario(**{"lambda": {"arch": "arm64"}})
    graviton = load_scenario(
        **{"lambda": {"arch": "arm64"}}, model={"isa_profiles": {"arm64_dotprod": arm}}
    )
    assert lambda_service_s(graviton) > lambda_service_s(x86)
    assert lambda_service_s(graviton) == pytest.approx((30.0 * 2 / (2048 / 1769) + 8.0) / 1000)
