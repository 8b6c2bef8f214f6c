"""Send chat requests with a video to a running vLLM server through the OpenAI client, all at once (one thread per
request), for tests/test_vllm.py and benchmarks/serving.py. Runs in the vLLM environment (it has `openai`):

    python -m tango_plugin.testing.vllm_client spec.json result.json

spec: {"base_url": ..., "model": ..., "requests": [{"name", "video_url", "question", "max_tokens",
"mm_processor_kwargs"}]}. The result holds per request the answer, `usage.prompt_tokens`, the seconds to the first
streamed token and to the end, or the error the server returned.
"""

import json
import sys
import threading
import time


def _one(client, model, request, out):
    content = [{"type": "video_url", "video_url": {"url": request["video_url"]}},
               {"type": "text", "text": request.get("question", "what happens?")}]
    extra = {}
    if request.get("mm_processor_kwargs"):
        extra["mm_processor_kwargs"] = request["mm_processor_kwargs"]
    started = time.perf_counter()
    try:
        stream = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": content}], max_tokens=request.get("max_tokens", 4),
            temperature=0.0, stream=True, stream_options={"include_usage": True}, extra_body=extra)
        first, text, usage = None, "", None
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                if first is None:
                    first = time.perf_counter() - started
                text += chunk.choices[0].delta.content
            if chunk.usage is not None:
                usage = chunk.usage
        out[request["name"]] = {"answer": text, "prompt_tokens": usage.prompt_tokens if usage else None,
                                "completion_tokens": usage.completion_tokens if usage else None, "ttft": first,
                                "seconds": time.perf_counter() - started, "error": None}
    except Exception as err:  # the test reads the server's message
        out[request["name"]] = {"error": f"{type(err).__name__}: {err}", "seconds": time.perf_counter() - started}


def main() -> None:
    from openai import OpenAI

    spec = json.load(open(sys.argv[1]))
    client = OpenAI(base_url=spec["base_url"], api_key="none", timeout=spec.get("timeout", 600))
    out: dict = {}
    threads = [threading.Thread(target=_one, args=(client, spec["model"], r, out)) for r in spec["requests"]]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    json.dump({"requests": out, "seconds": time.perf_counter() - started}, open(sys.argv[2], "w"))


if __name__ == "__main__":
    main()
