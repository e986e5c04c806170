"""GPU pools from published figures: labelled, and planned only when a scenario asks."""

from __future__ import annotations

from hybridserve.config import build_scenario, default_profile, load_scenario


def test_published_gpu_figures_are_not_planned_by_default():
    prof = default_profile().gpu_profiles["g4dn.xlarge"]
    assert prof.source == "published" and "published, not measured" in prof.provenance
    assert not [p for p in load_scenario().pools if p.instance_type == "g4dn.xlarge"]
    sc = load_scenario(gpu_published_profiles=True)
    (g4,) = [p for p in sc.pools if p.instance_type == "g4dn.xlarge"]
    assert g4.latency_s <= sc.slo.latency_s * sc.batch_latency_fraction


def test_another_models_profile_inherits_no_gpu_or_isa_figures():
    mine = default_profile().model_dump(by_alias=True)
    mine.pop("gpu_profiles")
    mine.pop("isa_profiles")
    mine["name"] = "mine"
    sc = build_scenario({"model": mine, "gpu_published_profiles": True})
    assert sc.model.gpu_profiles == {} and sc.model.isa_profiles == {}
    assert not [p for p in sc.pools if p.instance_type == "g4dn.xlarge"]
