"""integration/generation.py on plain tensors: what a pruned generate gives back and how a next turn continues.

The whole path through real tiny models (greedy, sampling, beams, assisted decoding, two turns) is in
tests/test_generate_modes.py; these tests pin each function's contract on hand-made inputs.
"""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, GenerationConfig

from tango_plugin.integration.generation import (
    CONTINUATION_ATTR,
    Continuation,
    cache_of,
    continuation_of,
    continued_inputs,
    give_back,
    lengths_as_given,
)

PROMPT = torch.tensor([[1, 2, 9, 9, 9, 3], [4, 9, 9, 9, 5, 6]])  # 9: video placeholders, 3 of them pruned to 1
SHORT = torch.tensor([[1, 2, 9, 3], [4, 9, 5, 6]])


def _generated(new):
    return torch.cat([SHORT, torch.tensor(new)], dim=1)


def test_give_back_puts_the_callers_prompt_before_the_new_tokens_and_marks_the_cache():
    cache = DynamicCache()
    out = give_back(_generated([[7, 8], [7, 0]]), PROMPT, 4, torch.ones(2, 4, dtype=torch.long), None, cache, False)
    assert out.tolist() == [[1, 2, 9, 9, 9, 3, 7, 8], [4, 9, 9, 9, 5, 6, 7, 0]]
    mark = getattr(cache, CONTINUATION_ATTR)
    assert torch.equal(mark.full, out) and torch.equal(mark.short, _generated([[7, 8], [7, 0]]))
    assert mark.short_mask.tolist() == [[1] * 6] * 2 and mark.short_types is None and not mark.intra_llm
    assert continuation_of({"past_key_values": cache}) is mark


def test_give_back_repeats_prompts_for_several_sequences_per_row():
    seqs = torch.cat([SHORT.repeat_interleave(2, dim=0), torch.tensor([[7], [8], [7], [9]])], dim=1)

    class Output:
        sequences = seqs
        past_key_values = None

    out = give_back(Output(), PROMPT, 4, None, None, None, False)
    assert out.sequences[:, :6].tolist() == PROMPT.repeat_interleave(2, dim=0).tolist()
    assert out.sequences[:, 6].tolist() == [7, 8, 7, 9]


def _continuation(intra=False):
    full = torch.cat([PROMPT, torch.tensor([[7], [7]])], dim=1)
    return Continuation(full=full, short=_generated([[7], [7]]), short_mask=torch.ones(2, 5, dtype=torch.long),
                        short_types=torch.zeros(2, 5, dtype=torch.long), intra_llm=intra)


def test_a_next_turn_is_moved_onto_the_sequences_the_cache_holds():
    previous = _continuation()
    turn = torch.tensor([[11, 12], [13, 14]])
    kw = {"input_ids": torch.cat([previous.full, turn], dim=1), "attention_mask": torch.ones(2, 9, dtype=torch.long),
          "mm_token_type_ids": torch.zeros(2, 9, dtype=torch.long), "video_grid_thw": "first turn's grid",
          "tango_video_timestamps": torch.zeros(3)}
    got = continued_inputs(kw, previous, brings_media=False, media_kwargs=("pixel_values_videos", "video_grid_thw"))
    assert torch.equal(got["input_ids"], torch.cat([previous.short, turn], dim=1))
    assert got["attention_mask"].shape == (2, 7) and got["mm_token_type_ids"].shape == (2, 7)
    assert "video_grid_thw" not in got and "tango_video_timestamps" not in got
    assert kw["input_ids"].shape == (2, 9)  # the caller's dict is not modified


@pytest.mark.parametrize("case,match", [
    ("intra", "ran the intra-LLM stage is not supported"),
    ("media", "cannot bring new video"),
    ("prefix", r"start with exactly the sequences that generate returned \(\(2, 7\)\)"),
])
def test_continuations_that_cannot_be_exact_are_refused(case, match):
    previous = _continuation(intra=case == "intra")
    ids = torch.cat([previous.full, torch.tensor([[11], [13]])], dim=1)
    if case == "prefix":
        ids[0, 2] = 42  # not the sequences that generate returned
    with pytest.raises(ValueError, match=match):
        continued_inputs({"input_ids": ids}, previous, brings_media=case == "media", media_kwargs=())


def test_lengths_keep_counting_the_callers_prompt():
    kw = {"max_length": 20, "min_length": 8}
    lengths_as_given(kw, 6)
    assert kw == {"max_new_tokens": 14, "min_new_tokens": 2}
    kw = {"generation_config": GenerationConfig(max_length=30)}
    lengths_as_given(kw, 6)
    assert kw["max_new_tokens"] == 24
    kw = {"max_length": 20, "max_new_tokens": 3}  # an explicit new-token count wins, as in transformers
    lengths_as_given(kw, 6)
    assert kw == {"max_new_tokens": 3}
    with pytest.raises(ValueError, match="Input length of input_ids is 6, but `max_length` is set to 5"):
        lengths_as_given({"max_length": 5}, 6)


def test_cache_of_reads_either_name():
    assert cache_of({"cache": "c"}) == "c" and cache_of({"past_key_values": "p", "cache": "c"}) == "p"
    assert cache_of({}) is None and continuation_of({}) is None
