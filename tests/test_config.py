"""TangoConfig: defaults, the threshold rule, validation messages, JSON round trip, presets."""

import pytest

import tango_plugin as tp
from tango_plugin.presets import list_presets


def test_defaults_follow_the_run_scripts():
    cfg = tp.TangoConfig()
    assert (cfg.retention_ratio, cfg.context_ratio, cfg.alpha, cfg.beta, cfg.num_neighbors) == (0.1, 0.4, 1.5, 0.6, 7)
    assert (cfg.segmentation, cfg.base_time, cfg.base_space) == ("holitom", 10000.0, 1000.0)
    assert cfg.similarity_threshold == 0.65 and cfg.static_threshold == 0.8
    assert tp.TangoConfig(retention_ratio=0.15).similarity_threshold == 0.8
    assert tp.TangoConfig(retention_ratio=0.15, similarity_threshold=0.7).similarity_threshold == 0.7


@pytest.mark.parametrize("field,value,match", [
    ("retention_ratio", 0.0, r"retention_ratio=0.0 is out of range; expected a number in \(0.0, 1.0\]"),
    ("retention_ratio", 1.5, "retention_ratio=1.5"),
    ("retention_ratio", "0.1", "retention_ratio='0.1'"),
    ("retention_ratio", float("nan"), "retention_ratio=nan"),
    ("context_ratio", -0.1, "context_ratio=-0.1"),
    ("similarity_threshold", 1.2, "similarity_threshold=1.2"),
    ("alpha", 0.5, "alpha=0.5"),
    ("beta", 2.0, "beta=2.0"),
    ("num_neighbors", 0, "num_neighbors=0.*integer >= 1"),
    ("num_neighbors", 2.5, "num_neighbors=2.5"),
    ("segmentation", "kmeans", r"segmentation='kmeans'.*\['holitom', 'fastvid'\]"),
    ("saliency_source", "cls", "saliency_source='cls'"),
    ("sink_positions", [1, -2], "sink_positions"),
    ("base_time", 1.0, "base_time=1.0"),
    ("strategy", "", "strategy=''"),
    ("prune_images", "yes", "prune_images='yes'"),
])
def test_invalid_values_name_field_value_and_range(field, value, match):
    with pytest.raises(ValueError, match=match):
        tp.TangoConfig(**{field: value})


def test_json_round_trip_and_unknown_keys():
    cfg = tp.TangoConfig(retention_ratio=0.2, sink_positions=[1, 2], segmentation="fastvid")
    again = tp.TangoConfig.from_json(cfg.to_json())
    assert again == cfg
    with pytest.raises(ValueError, match="unknown TangoConfig field"):
        tp.TangoConfig.from_dict({"retention": 0.1})


def test_replace_reapplies_the_threshold_rule():
    cfg = tp.TangoConfig(retention_ratio=0.1)
    assert cfg.replace(retention_ratio=0.2).similarity_threshold == 0.8
    assert cfg.replace(strategy="topk").similarity_threshold == 0.65


def test_presets():
    assert {"llava-onevision", "llava-video", "qwen2-vl", "qwen2.5-vl", "qwen3-vl"} <= set(list_presets())
    ov = tp.TangoConfig.from_preset("llava-onevision", retention_ratio=0.15)
    assert ov.sink_positions == [28, 27, 41, 169, 11, 12] and ov.retention_ratio == 0.15
    assert ov.similarity_threshold == 0.8
    assert tp.TangoConfig.from_preset("llava-video").sink_positions == [26, 157, 11]
    with pytest.raises(ValueError, match="unknown preset 'gpt'.*llava-onevision"):
        tp.TangoConfig.from_preset("gpt")


def test_help_texts_exist_for_every_field():
    helps = tp.TangoConfig.help()
    assert helps and all(helps.values())


def test_adapter_options_are_knobs_declared_by_their_family():
    """LLaVA-OV's options are knobs with the values its adapter validates, declared by the family (not the core),
    checked before any model loads; registering an option again must agree with what is there."""
    import pytest
    from tango_plugin.model_zoo import llava_onevision_options as lo

    from tango_plugin.knobs import ENABLE_OPTIONS, config_from_knobs, register_enable_option

    assert ENABLE_OPTIONS["pool_mode"] == lo.POOL_MODES and ENABLE_OPTIONS["newline"] == lo.NEWLINE_MODES
    assert config_from_knobs({"tango_pool_mode": "average", "tango_newline": "grid"})[1] == {
        "pool_mode": "average", "newline": "grid"}
    with pytest.raises(ValueError, match="tango_pool_mode='avg' is not allowed; expected one of 'bilinear'"):
        config_from_knobs({"tango_pool_mode": "avg"})
    register_enable_option("pool_mode", lo.POOL_MODES)  # the same values again: fine
    with pytest.raises(ValueError, match="already registered with values"):
        register_enable_option("pool_mode", ("bilinear",))
    with pytest.raises(ValueError, match="that is a TangoConfig field"):
        register_enable_option("retention_ratio", ("a",))
    with pytest.raises(ValueError, match="expected an identifier"):
        register_enable_option("report", ("x",))
    assert "retention_ratio" not in ENABLE_OPTIONS and ENABLE_OPTIONS["pool_mode"] == lo.POOL_MODES


def test_every_field_is_described_once_where_it_is_declared():
    """The class docstring is written from each field's help and details (no second copy to drift)."""
    import dataclasses

    doc = tp.TangoConfig.__doc__
    assert "{fields}" not in doc
    for f in dataclasses.fields(tp.TangoConfig):
        assert f"        {f.name}: {f.metadata['help'][:40]}" in doc, f.name
    assert "The reference uses K = 18 of 28" in " ".join(doc.split())  # a field's details follow its help
