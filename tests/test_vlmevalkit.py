"""The VLMEvalKit integration: Tango subclasses of VLMEvalKit's classes, `supported_VLM` entries, the run.py launcher.

VLMEvalKit (`vlmeval`) is not on PyPI; the tests that need it skip where it cannot be imported (see
docs/vlmevalkit.md for the environment they were run in). They use tiny random checkpoints with real processors
and a generated video file, on the CPU (the subclasses' CUDA fallback). Expected frames follow the published
sampling rules, written out here: qwen-vl-utils 0.0.14 at VLMEvalKit's default 2 fps
(`round(linspace(0, n - 1, k))`, k = n / fps * 2 clamped to [4, n] and floored to even), and
`LLaVA_OneVision_HF.load_video` (every `round(file fps / 1)`-th frame while at most `nframe`), each frame at
index / file fps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tango_plugin.testing.clips import write_clip

ROOT = Path(__file__).resolve().parents[1]
FRAMES, FPS = 20, 5  # the generated clip: 4 s at 5 fps, every frame different
SIDE = 112
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # VLMEvalKit imports litellm: no network lookup


# ================================================================================== without VLMEvalKit (CI too)
def test_module_imports_without_vlmeval_and_says_what_to_install(monkeypatch):
    import tango_plugin.patches.vlmevalkit as vk

    monkeypatch.setitem(sys.modules, "vlmeval", None)  # as if it were not installed
    monkeypatch.setitem(sys.modules, "vlmeval.vlm", None)
    monkeypatch.setattr(vk, "_BUILT", {})
    for call in (lambda: vk.TangoQwen2VLChat, lambda: vk.register_supported_vlm(), lambda: vk.find_run_py()):
        with pytest.raises(ImportError, match="VLMEvalKit .*not installed.*open-compass/VLMEvalKit"):
            call()
    assert vk.main(["list"]) == 2  # the launcher: a clear message and a non-zero exit


def test_launcher_arguments():
    import tango_plugin.patches.vlmevalkit as vk

    own, rest = vk._split_launcher_args(["--data", "X", "--tango-args", "tango_ratio=0.2", "--tango-import=a",
                                         "--model", "tango_M", "--tango-import", "b", "--run-py=/r.py"])
    assert own == {"--run-py": "/r.py", "--tango-args": "tango_ratio=0.2", "--tango-import": ["a", "b"]}
    assert rest == ["--data", "X", "--model", "tango_M"]
    assert vk.parse_knob_text("tango_ratio=0.25, tango_report=a=b.json") == {"tango_ratio": "0.25",
                                                                            "tango_report": "a=b.json"}
    with pytest.raises(ValueError, match="'tango_ratio' is not name=value"):
        vk.parse_knob_text("tango_ratio")
    with pytest.raises(ValueError, match="is not a file"):
        vk.find_run_py("/no/such/run.py")
    with pytest.raises(AttributeError):
        vk.NotAClass  # noqa: B018
    with pytest.raises(ValueError, match="unknown Tango VLMEvalKit class 'X'"):
        vk.tango_class("X")


# ================================================================================================ with VLMEvalKit
@pytest.fixture(scope="module")
def vk():
    try:
        import vlmeval.config  # noqa: F401
        import vlmeval.vlm  # noqa: F401
    except Exception as err:  # not installed, or installed without its requirements
        pytest.skip(f"VLMEvalKit (vlmeval) is not importable: {type(err).__name__}: {err} "
                    "(it is not on PyPI; docs/vlmevalkit.md says how to install it)")
    for name in ("transformers", "qwen_vl_utils", "decord", "av"):
        pytest.importorskip(name, reason=f"{name} is needed for the VLMEvalKit tests")
    import tango_plugin.patches.vlmevalkit as module

    return module


def _write_clip(path: Path) -> str:
    return write_clip(str(path), FRAMES, FPS, side=SIDE, seed=0)


QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for c in message['content'] %}{% if c['type'] == 'video' %}"
    "<|vision_start|><|video_pad|><|vision_end|>{% elif c['type'] == 'image' %}<|vision_start|><|image_pad|>"
    "<|vision_end|>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LLAVA_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% for c in message['content'] %}"
    "{% if c['type'] == 'video' %}<video>{% elif c['type'] == 'image' %}<image>{% elif c['type'] == 'text' %}"
    "{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _save_checkpoint(folder: Path, model_type: str) -> str:
    import transformers as tf

    from tango_plugin import testing

    tok = testing.build_tokenizer("llava" if model_type == "llava_onevision" else "qwen")
    model = testing.build_model(model_type, tok)
    if model_type in ("qwen2_vl", "qwen2_5_vl"):
        px = dict(min_pixels=56 * 56, max_pixels=SIDE * SIDE)
        cls = tf.Qwen2VLProcessor if model_type == "qwen2_vl" else tf.Qwen2_5_VLProcessor
        proc = cls(image_processor=tf.Qwen2VLImageProcessor(**px), tokenizer=tok, chat_template=QWEN_TEMPLATE,
                   video_processor=tf.Qwen2VLVideoProcessor(**px, cap_pixels_per_frame=False))
    elif model_type == "qwen3_vl":
        proc = tf.Qwen3VLProcessor(
            image_processor=tf.Qwen2VLImageProcessor(patch_size=16, min_pixels=32 * 32, max_pixels=128 * 128),
            tokenizer=tok, chat_template=QWEN_TEMPLATE, video_processor=tf.Qwen3VLVideoProcessor(
                size={"shortest_edge": 32 * 32 * 4, "longest_edge": 128 * 128 * 16}, cap_pixels_per_frame=False))
    else:
        size = {"height": SIDE, "width": SIDE}
        proc = tf.LlavaOnevisionProcessor(
            image_processor=tf.LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=[[SIDE, SIDE]]),
            tokenizer=tok, video_processor=tf.LlavaOnevisionVideoProcessor(size=size), num_image_tokens=64,
            vision_feature_select_strategy="full", chat_template=LLAVA_TEMPLATE)
    if model_type == "llava_onevision":
        # VLMEvalKit asks for max_new_tokens=2048: every token ends the tiny random model's answer (one token)
        model.generation_config.eos_token_id = list(range(model.config.text_config.vocab_size))
    model.save_pretrained(folder)
    proc.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def env(vk, tmp_path_factory):
    root = tmp_path_factory.mktemp("vlmevalkit")
    return {"root": root, "clip": _write_clip(root / "clip.mp4"), "checkpoints": {}}


def _checkpoint(env, model_type: str) -> str:
    if model_type not in env["checkpoints"]:
        env["checkpoints"][model_type] = _save_checkpoint(env["root"] / model_type, model_type)
    return env["checkpoints"][model_type]


def _qwen_vl_utils_indices(frames: int, fps: float, sample_fps: float = 2.0) -> list:
    k = int(min(max(frames / fps * sample_fps, 4), frames) // 2 * 2)
    return np.round(np.linspace(0, frames - 1, k)).astype(int).tolist()


# family -> (class, model_type, constructor kwargs, frame indices expected)
FAMILIES = {
    "qwen2_vl": ("TangoQwen2VLChat", dict(min_pixels=56 * 56, max_pixels=SIDE * SIDE, max_new_tokens=4)),
    "qwen2_5_vl": ("TangoQwen2VLChat", dict(min_pixels=56 * 56, max_pixels=SIDE * SIDE, max_new_tokens=4)),
    "qwen3_vl": ("TangoQwen3VLChat", dict(min_pixels=4096, max_pixels=16384, max_new_tokens=4, temperature=0)),
    "llava_onevision": ("TangoLLaVA_OneVision_HF", dict(nframe=6, tango_sink_positions=[])),
}
EXPECTED = {
    "qwen2_vl": _qwen_vl_utils_indices(FRAMES, FPS),
    "qwen2_5_vl": _qwen_vl_utils_indices(FRAMES, FPS),
    "qwen3_vl": _qwen_vl_utils_indices(FRAMES, FPS),
    "llava_onevision": list(range(0, FRAMES, FPS)),  # load_video: every round(5 / 1)-th frame, 4 <= nframe
}


def _build(vk, env, family: str, **knobs):
    name, kwargs = FAMILIES[family]
    return getattr(vk, name)(model_path=_checkpoint(env, family), **kwargs, **knobs)


def _ask(model, env) -> str:
    message = [{"type": "video", "value": env["clip"]}, {"type": "text", "value": "What happens?"}]
    return model.generate(message, dataset="Video-MME")  # a video dataset: VLMEvalKit's video route


def _engine_times(family: str, times: list) -> list:
    """What the engine should use: per frame for LLaVA-OV; per 2-frame temporal patch for Qwen: Qwen3-VL the mean
    of the patch's two frames, Qwen2/2.5-VL interpolated from the first to the last frame (the adapters' rules)."""
    if family == "llava_onevision":
        return times
    if family == "qwen3_vl":
        return [(a + b) / 2 for a, b in zip(times[0::2], times[1::2])]
    patches = len(times) // 2
    return np.interp(np.linspace(0, len(times) - 1, patches), np.arange(len(times)), times).tolist()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_subclass_prunes_with_the_true_frame_times(vk, env, family):
    report_path = env["root"] / f"report_{family}.json"
    model = _build(vk, env, family, tango_ratio=0.25, tango_report=str(report_path))
    assert type(model).__mro__[1] is vk.TangoVLMMixin
    assert model.tango_handle is not None
    answer = _ask(model, env)
    assert isinstance(answer, str)
    report = json.loads(report_path.read_text())
    assert report["enabled"] is True and report["generate_calls"] == 1 and report["warnings"] == []
    assert report["vlmeval_class"].startswith("vlmeval.vlm.")
    (row,) = report["samples"]
    assert row["dataset"] == "Video-MME" and row["pruned"] is True, row.get("note")
    assert row["visual_tokens_after"] < row["visual_tokens_before"]
    assert report["visual_tokens_after"] == row["visual_tokens_after"]
    (video,) = row["videos"]
    want = EXPECTED[family]
    truth = [i / FPS for i in want]
    assert video["frame_indices"] == want and video["video_fps"] == pytest.approx(FPS)
    assert video["frame_times"] == pytest.approx(truth, abs=1e-12) and video["passed_to_engine"] is True
    assert os.path.basename(video["path"]) == "clip.mp4"
    # what the engine itself used
    assert row["timestamps_source"] == "tango_video_timestamps (per call)"
    (engine,) = row["video_timestamps"]
    assert engine == pytest.approx(_engine_times(family, truth), abs=1e-9)
    if family == "qwen2_5_vl":  # the model itself got the processor's 24-fps default (VLMEvalKit passes no metadata)
        assert video["model_second_per_grid_ts"] == pytest.approx(2 / 24)
    print(f"\n{family}: true frame times {truth}; engine got {engine} ({row['timestamps_source']})")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_ratio_one_gives_the_unpruned_answer(vk, env, family):
    off = _build(vk, env, family, tango=False)
    assert off.tango_handle is None
    full = _build(vk, env, family, tango_ratio=1.0)
    assert _ask(full, env) == _ask(off, env)


@pytest.mark.parametrize("knobs,fragments", [
    ({"tango_ratoi": "0.3"}, ["TangoQwen2VLChat: bad tango knob", "unknown tango knob tango_ratoi='0.3'",
                              "tango_ratio"]),
    ({"tango_ratio": "abc"}, ["tango_ratio='abc'", "a number"]),
    ({"tango_ratio": 1.5}, ["tango_ratio", "(0.0, 1.0]"]),
    ({"use_vllm": True}, ["use_vllm=True is not supported"]),
])
def test_bad_knobs_fail_before_loading(vk, knobs, fragments):
    with pytest.raises(ValueError) as err:
        vk.TangoQwen2VLChat(model_path="/no/such/checkpoint", **knobs)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_unsupported_model_is_named(vk, env):
    # Qwen2VLChat also loads Qwen2.5-Omni; any model without a Tango adapter is refused with the list
    with pytest.raises(ValueError, match="TangoQwen2VLChat: cannot enable Tango"):
        model = _build(vk, env, "qwen2_vl")
        model._tango.enabled = True
        model._tango.install(object())


def test_register_supported_vlm(vk):
    import vlmeval.vlm
    from vlmeval.config import supported_VLM

    names = vk.register_supported_vlm({"tango_ratio": "0.2"})
    for name in ("tango_Qwen2-VL-2B-Instruct", "tango_Qwen3-VL-2B-Instruct", "tango_llava-onevision-qwen2-0.5b-ov-hf"):
        assert name in names and name in supported_VLM
    entry, original = supported_VLM["tango_Qwen2-VL-2B-Instruct"], supported_VLM["Qwen2-VL-2B-Instruct"]
    assert entry.func is vk.TangoQwen2VLChat and issubclass(entry.func, original.func)
    assert entry.keywords == {**original.keywords, "tango_ratio": "0.2"}
    assert supported_VLM["tango_Qwen3-VL-2B-Instruct"].func is vk.TangoQwen3VLChat
    assert vlmeval.vlm.TangoLLaVA_OneVision_HF is vk.TangoLLaVA_OneVision_HF  # for --config "class" entries
    assert not any(n.startswith("tango_tango_") for n in vk.register_supported_vlm())  # idempotent
    with pytest.raises(ValueError, match="register_supported_vlm: bad tango knob: tango_ratio"):
        vk.register_supported_vlm({"tango_ratio": 2})
    with pytest.raises(ValueError, match="not tango knobs: ratio=0.2"):
        vk.register_supported_vlm({"ratio": 0.2})


# ---------------------------------------------------------------------------------------- the run.py launcher
TINY_SETUP = '''
"""Registers a tiny checkpoint and a one-question video dataset in VLMEvalKit (test only)."""
from functools import partial

import pandas as pd

import vlmeval.dataset as ds
from vlmeval.config import supported_VLM
from vlmeval.dataset.video_base import VideoBaseDataset
from vlmeval.dataset.video_dataset_config import supported_video_datasets
import vlmeval.vlm as vlm

CKPT, CLIP, TSV = {ckpt!r}, {clip!r}, {tsv!r}


class TangoTinyVideo(VideoBaseDataset):
    TYPE = "Video-VQA"

    @classmethod
    def supported_datasets(cls):
        return ["TangoTinyVideo"]

    def prepare_dataset(self, dataset):
        pd.DataFrame({{"index": [0], "video": ["clip"], "question": ["What happens?"], "answer": ["x"]}}).to_csv(
            TSV, sep="\\t", index=False)
        return {{"root": "", "data_file": TSV}}

    def build_prompt(self, line, video_llm=True):
        line = self.data.iloc[line] if isinstance(line, int) else line
        return [dict(type="video", value=CLIP), dict(type="text", value=line["question"])]

    def evaluate(self, eval_file, **judge_kwargs):
        return {{"answered": 1}}


ds.TangoTinyVideo = TangoTinyVideo
ds.DATASET_CLASSES.append(TangoTinyVideo)  # its modality (VIDEO) is looked up there
supported_video_datasets["TangoTinyVideo"] = partial(TangoTinyVideo, dataset="TangoTinyVideo")
supported_VLM["Qwen2-VL-tiny"] = partial(vlm.Qwen2VLChat, model_path=CKPT, min_pixels=56 * 56,
                                         max_pixels={side} * {side}, max_new_tokens=4)
'''


@pytest.mark.parametrize("route", ["model", "config"])
def test_launcher_runs_vlmevalkit_run_py(vk, env, route):
    """`--model tango_<entry>` (registered from a supported_VLM entry), or a `--config` file naming the class."""
    run_py = vk.find_run_py()
    work = env["root"] / f"work_{route}"
    report = env["root"] / f"launcher_report_{route}.json"
    setup = env["root"] / "setup_mod"
    setup.mkdir(exist_ok=True)
    (setup / "tango_tiny_setup.py").write_text(textwrap.dedent(TINY_SETUP.format(
        ckpt=_checkpoint(env, "qwen2_vl"), clip=env["clip"], tsv=str(env["root"] / "TangoTinyVideo.tsv"),
        side=SIDE)))
    runenv = {**os.environ, "PYTHONPATH": os.pathsep.join([str(setup), os.environ.get("PYTHONPATH", "")]),
              "LMUData": str(env["root"] / "LMUData"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
              "FORCE_QWENVL_VIDEO_READER": "decord", "OMP_NUM_THREADS": "2", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    cmd = [sys.executable, "-m", "tango_plugin.patches.vlmevalkit", "run", "--run-py", run_py,
           "--tango-import", "tango_tiny_setup"]
    if route == "model":
        cmd += ["--tango-args", f"tango_ratio=0.25,tango_report={report}", "--model", "tango_Qwen2-VL-tiny",
                "--data", "TangoTinyVideo"]
    else:
        config = {"model": {"tiny_tango": {"class": "TangoQwen2VLChat", "model_path": _checkpoint(env, "qwen2_vl"),
                                           "min_pixels": 56 * 56, "max_pixels": SIDE * SIDE, "max_new_tokens": 4,
                                           "tango_ratio": 0.25, "tango_report": str(report)}},
                  "data": {"TangoTinyVideo": {}}}
        (env["root"] / "tango.json").write_text(json.dumps(config))
        cmd += ["--config", str(env["root"] / "tango.json")]
    cmd += ["--mode", "infer", "--work-dir", str(work)]
    proc = subprocess.run(cmd, env=runenv, capture_output=True, text=True, timeout=900, cwd=str(env["root"]))
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-6000:]
    assert "registered" in text and report.exists(), text[-6000:]
    data = json.loads(report.read_text())
    assert data["model"] == "TangoQwen2VLChat" and data["generate_calls"] == 1, data
    (row,) = data["samples"]
    assert row["pruned"] is True and row["visual_tokens_after"] < row["visual_tokens_before"]
    assert row["dataset"] == "TangoTinyVideo"
    want = [i / FPS for i in EXPECTED["qwen2_vl"]]
    assert row["videos"][0]["frame_times"] == pytest.approx(want)
    assert row["video_timestamps"][0] == pytest.approx(_engine_times("qwen2_vl", want))
    preds = list(work.rglob("*TangoTinyVideo*"))
    assert preds, f"run.py wrote no prediction file:\n{text[-4000:]}"
    print(f"\nlauncher: true frame times {want}; engine got {row['video_timestamps'][0]}")


def test_launcher_bad_knob_fails_before_loading(vk):
    proc = subprocess.run([sys.executable, "-m", "tango_plugin.patches.vlmevalkit", "list", "--tango-args",
                           "tango_ratoi=0.3"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
    assert proc.returncode == 2
    assert "unknown tango knob tango_ratoi='0.3'" in proc.stderr and "tango_ratio" in proc.stderr
