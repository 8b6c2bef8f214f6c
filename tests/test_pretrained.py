"""The config flag: `save_pretrained` of an enabled model writes a `tango` section to config.json, and
`tango_plugin.from_pretrained` loads such a folder with pruning on."""

from __future__ import annotations

import json

import pytest
import torch
from adapter_testers import TESTERS

import tango_plugin as tango


@pytest.fixture()
def saved(tmp_path):
    t = TESTERS["qwen2_vl"]
    model = t.fresh_model()
    cfg = tango.TangoConfig(retention_ratio=0.25, strategy="topk")
    with tango.enabled(model, cfg, fps=2.0):
        model.save_pretrained(tmp_path / "enabled")
    model.save_pretrained(tmp_path / "plain")
    return t, model, cfg, tmp_path


def test_save_pretrained_of_an_enabled_model_writes_the_section(saved):
    t, model, cfg, tmp = saved
    section = json.loads((tmp / "enabled" / "config.json").read_text())["tango"]
    assert section["tango_retention_ratio"] == 0.25 and section["tango_strategy"] == "topk"
    assert section["tango_fps"] == 2.0
    assert "tango" not in json.loads((tmp / "plain" / "config.json").read_text())  # removed with the handle
    assert "tango" not in model.config.__dict__


@torch.no_grad()
def test_from_pretrained_loads_with_pruning_on(saved):
    t, model, cfg, tmp = saved
    loaded = tango.from_pretrained(str(tmp / "enabled"), local_files_only=True)
    handle = tango.get_handle(loaded)
    assert handle is not None and handle.config == cfg and handle.adapter.options == {"fps": 2.0}
    inputs = t.single(loaded)
    loaded.generate(**inputs, max_new_tokens=2, do_sample=False)
    row = handle.report()["samples"][0]
    assert row["pruned"] and row["visual_tokens_after"] == -(-row["visual_tokens_before"] // 4)
    assert row["timestamps_source"] == "fps option"
    handle.remove()
    with pytest.warns(UserWarning, match="no 'tango' section"):
        plain = tango.from_pretrained(str(tmp / "plain"), local_files_only=True)
    assert tango.get_handle(plain) is None
    assert tango.get_handle(tango.from_pretrained(str(tmp / "enabled"), enable=False, local_files_only=True)) is None


def test_a_bad_knob_in_the_section_fails_before_loading(saved):
    t, model, cfg, tmp = saved
    path = tmp / "enabled" / "config.json"
    data = json.loads(path.read_text())
    data["tango"]["tango_retention_rato"] = 0.2
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="unknown tango knob tango_retention_rato=0.2; allowed:"):
        tango.from_pretrained(str(tmp / "enabled"), local_files_only=True)
    del data["tango"]["tango_retention_rato"]
    data["tango"]["tango_retention_ratio"] = 1.5
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="tango_retention_ratio: retention_ratio=1.5 is out of range"):
        tango.from_pretrained(str(tmp / "enabled"), local_files_only=True)
    with pytest.raises(ValueError, match="no config.json"):
        tango.from_pretrained(str(tmp / "nowhere"))
