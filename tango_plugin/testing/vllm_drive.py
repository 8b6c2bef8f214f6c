"""Run vLLM offline on one checkpoint for the vLLM tests (tests/test_vllm.py), in the vLLM environment:

    python -m tango_plugin.testing.vllm_drive spec.json result.json

The spec names the model, the `LLM(...)` arguments and groups of requests; each group is one `LLM.generate` call
(its requests are scheduled together). A request has a prompt (with the family's video / image placeholders), an
optional video (frames from a .npy file, with metadata: fps and frame indices) or image, `mm_processor_kwargs` and
`max_tokens`. The result holds, per request, the prompt token count and the greedy output tokens, or the error a
group raised; and `load_error` when `LLM(...)` itself failed. Everything is measured here and judged by the test.
"""

import json
import sys
import time
import traceback


def _describe(err: BaseException) -> str:
    """The error and the errors it was raised from (vLLM wraps the processor's own message)."""
    parts = []
    while err is not None and len(parts) < 5:
        parts.append(f"{type(err).__name__}: {err}")
        err = err.__cause__ or err.__context__
    return " <- ".join(parts)


def _one_video(video, np):
    frames = np.load(video["frames"])
    meta = {"fps": float(video["fps"]), "duration": len(frames) / float(video["fps"]),
            "total_num_frames": int(video.get("total_num_frames", len(frames))),
            "frames_indices": list(video.get("indices", range(len(frames)))), "video_backend": "opencv",
            "do_sample_frames": False}
    return frames if video.get("no_metadata") else (frames, meta)


def _media(request, np):
    data = {}
    if request.get("video") is not None:
        data["video"] = _one_video(request["video"], np)
    if request.get("videos") is not None:  # several videos in one request
        data["video"] = [_one_video(v, np) for v in request["videos"]]
    image = request.get("image")
    if image is not None:
        from PIL import Image

        data["image"] = Image.fromarray(np.load(image["pixels"]))
    return data


def main() -> None:
    spec_path, out_path = sys.argv[1], sys.argv[2]
    with open(spec_path) as f:
        spec = json.load(f)
    import numpy as np
    from vllm import LLM, SamplingParams

    import tango_plugin.patches.vllm as plugin

    result = {"load_error": None, "requests": {}, "applied": None, "load_seconds": None}
    started = time.perf_counter()
    try:
        llm = LLM(model=spec["model"], **spec.get("llm_kwargs", {}))
    except Exception as err:  # the test reads the message (bad section, unsupported architecture, ...)
        result["load_error"] = _describe(err)
        result["traceback"] = traceback.format_exc()
        with open(out_path, "w") as f:
            json.dump(result, f)
        return
    result["load_seconds"] = time.perf_counter() - started
    result["applied"] = plugin.applied()
    for group in spec.get("groups", []):
        prompts, params = [], []
        for request in group:
            entry = {"prompt": request["prompt"], "multi_modal_data": _media(request, np)}
            if request.get("mm_processor_kwargs"):
                entry["mm_processor_kwargs"] = request["mm_processor_kwargs"]
            prompts.append(entry)
            params.append(SamplingParams(max_tokens=request.get("max_tokens", 8), temperature=0.0))
        try:
            t0 = time.perf_counter()
            outputs = llm.generate(prompts, params, use_tqdm=False)
            seconds = time.perf_counter() - t0
            for request, output in zip(group, outputs):
                result["requests"][request["name"]] = {
                    "prompt_tokens": len(output.prompt_token_ids), "output": list(output.outputs[0].token_ids),
                    "prompt_token_ids": list(output.prompt_token_ids), "seconds": seconds, "error": None}
        except Exception as err:
            for request in group:
                result["requests"][request["name"]] = {"error": _describe(err)}
    with open(out_path, "w") as f:
        json.dump(result, f)
    del llm


if __name__ == "__main__":
    main()
