"""Functions of the tango_tiny_video task (loaded by lmms-eval through `!function utils.<name>`)."""

import os


def doc_to_visual(doc):
    folder = os.environ.get("TANGO_TINY_VIDEO_DIR")
    if not folder:
        raise RuntimeError("tango_tiny_video: set TANGO_TINY_VIDEO_DIR to the folder holding clip_a.mp4 and "
                           "clip_b.mp4 (tests/test_lmms_eval.py writes them)")
    path = os.path.join(folder, doc["video"])
    if not os.path.isfile(path):
        raise FileNotFoundError(f"tango_tiny_video: video file {path} is missing")
    return [path]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"] + "\nAnswer with one word."


def process_results(doc, results):
    prediction = (results[0] if results else "").strip().lower()
    return {"exact_match": float(prediction == doc["answer"])}
