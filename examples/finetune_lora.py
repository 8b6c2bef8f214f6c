"""Fine-tune a Video LLM with LoRA and the Hugging Face `Trainer` while Tango prunes its video tokens.

The run is self-contained (no downloads): a tiny random Qwen2-VL from `tango_plugin.testing`, and a generated
video-QA set whose answer depends on the video (a square moves over a grey background; "what colour is the moving
square?" -> red / green / blue). It

1. scores held-out clips with the untrained model (the answer with the highest likelihood among the three), with
   and without pruning;
2. trains LoRA on the language model and the projector (`tango_plugin.lora_target_modules`) with the `Trainer`,
   pruning on (training sees what inference will see);
3. scores the trained model again, with and without pruning;
4. saves the adapter and the Tango config together (`tango_plugin.save_peft_adapter`), loads both back into a
   fresh copy of the base model (`tango_plugin.load_peft_adapter`) and checks that it gives the same outputs.

    python examples/finetune_lora.py --output runs/colour-lora

With a real checkpoint, replace `build_model` / `batch` by your model, processor and dataset; the Tango, PEFT
and Trainer calls stay as they are (docs/training.md).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings

import torch

COLOURS = {"red": (1.0, -0.8, -0.8), "green": (-0.8, 1.0, -0.8), "blue": (-0.8, -0.8, 1.0)}
QUESTION = "what colour is the moving square?"
FPS = 4.0  # the generated clips' frame rate: frame k is at k / FPS seconds


def clip(colour: str, seed: int, frames: int, size: int) -> torch.Tensor:
    """(frames, 3, size, size) pixels in [-1, 1]: a `colour` square moving in a straight line over grey noise."""
    g = torch.Generator().manual_seed(seed)
    video = 0.1 * torch.randn(frames, 3, size, size, generator=g)
    side = size // 3
    start = torch.randint(0, size - side, (2,), generator=g).float()
    step = (torch.rand(2, generator=g) - 0.5) * (size - side) / max(frames - 1, 1)
    for t in range(frames):
        y, x = (start + t * step).clamp(0, size - side).round().long().tolist()
        video[t, :, y:y + side, x:x + side] = torch.tensor(COLOURS[colour])[:, None, None]
    return video.clamp(-1, 1)


def samples(n: int, first_seed: int):
    """n (colour, seed) pairs, the colours in turn."""
    names = sorted(COLOURS)
    return [(names[i % len(names)], first_seed + i) for i in range(n)]


def batch(model, tok, items, frames: int, answers=None) -> dict:
    """Model inputs for (colour, seed) items; with `answers`, the training layout (labels on the answer only)."""
    from tango_plugin import testing

    size = 8 * model.config.vision_config.patch_size
    media = [[testing.VideoSpec(frames, pixels=clip(c, s, frames, size))] for c, s in items]
    return testing.video_inputs(model, tok, media, [QUESTION] * len(items), padding_side="right",
                                labels=answers is not None, answers=answers)


class ColourQA(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


@torch.no_grad()
def accuracy(model, tok, items, frames: int) -> float:
    """Share of clips whose true colour is the most likely answer: the three answers start with different tokens,
    so the next-token distribution after the prompt decides.

    One clip per call: in a batch the pruned rows have different lengths, so the last position is not the last
    token of every row (`handle.layout()` says where each row's tokens are; docs/usage.md, "Generate modes").
    """
    model.eval()
    first = {c: tok(c, add_special_tokens=False)["input_ids"][0] for c in COLOURS}
    assert len(set(first.values())) == len(first), f"the answers must start with different tokens: {first}"
    names = list(first)
    right = 0
    for colour, seed in items:
        logits = model(**batch(model, tok, [(colour, seed)], frames)).logits[0, -1, [first[c] for c in names]]
        right += names[int(logits.argmax())] == colour
    return right / len(items)


def run(args) -> dict:
    import peft
    from transformers import Qwen2VLForConditionalGeneration, Trainer, TrainingArguments

    import tango_plugin as tango
    from tango_plugin import testing

    torch.manual_seed(args.seed)
    tok = testing.build_tokenizer("qwen", padding_side="right")
    # initializer_range 0.2: a random lm_head of the default 0.02 scale caps the logits near 1, so no small LoRA
    # could make an answer likely (real checkpoints do not have that problem)
    model = testing.build_model("qwen2_vl", tok, seed=args.seed, text_overrides={"initializer_range": 0.2})
    base_dir, adapter_dir = os.path.join(args.output, "base"), os.path.join(args.output, "adapter")
    model.save_pretrained(base_dir)  # a real run starts from a checkpoint folder; this one from random weights
    tok.save_pretrained(base_dir)
    train_items = samples(args.train_samples, first_seed=1000)
    held_out = samples(args.eval_samples, first_seed=5000)
    cfg = tango.TangoConfig(retention_ratio=args.ratio)

    targets = tango.lora_target_modules(model, ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"],
                                        projector=True)
    pm = peft.get_peft_model(model, peft.LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0,
                                                    target_modules=targets))
    handle = tango.enable(pm, cfg, fps=FPS)  # either order works: enable before or after get_peft_model

    def both_accuracies() -> dict:
        pruned = accuracy(pm, tok, held_out, args.frames)
        tango.disable(pm)
        full = accuracy(pm, tok, held_out, args.frames)
        tango.enable(pm, cfg, fps=FPS)
        return {"pruned": pruned, "full": full}

    before = both_accuracies()

    training_args = TrainingArguments(
        output_dir=os.path.join(args.output, "trainer"), max_steps=args.steps, per_device_train_batch_size=args.batch,
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, logging_steps=max(1, args.steps // 10),
        save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0, remove_unused_columns=False,
        seed=args.seed, disable_tqdm=True)
    trainer = Trainer(model=pm, args=training_args, train_dataset=ColourQA(train_items),
                      data_collator=lambda items: batch(model, tok, items, args.frames, [c for c, _ in items]))
    started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - started
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    handle = tango.get_handle(pm)
    kept = handle.report()["samples"][0]

    after = both_accuracies()

    tango.save_peft_adapter(pm, adapter_dir)
    probe = batch(model, tok, held_out[:2], args.frames)
    pm.eval()
    with torch.no_grad():
        trained_logits = pm(**probe).logits
    fresh = Qwen2VLForConditionalGeneration.from_pretrained(base_dir)
    loaded = tango.load_peft_adapter(fresh, adapter_dir)
    with torch.no_grad():
        loaded_logits = loaded(**probe).logits
    same = bool(trained_logits.shape == loaded_logits.shape and torch.allclose(trained_logits, loaded_logits,
                                                                                atol=1e-5, rtol=1e-5))
    return {
        "steps": args.steps, "ratio": args.ratio, "frames": args.frames, "train_seconds": round(train_seconds, 2),
        "first_loss": losses[0], "last_loss": losses[-1], "losses": losses,
        "visual_tokens_before": kept["visual_tokens_before"], "visual_tokens_after": kept["visual_tokens_after"],
        "accuracy_untrained": before, "accuracy_trained": after, "chance": 1 / len(COLOURS),
        "reloaded_same_outputs": same, "reloaded_pruned": bool(tango.get_handle(loaded).report()["samples"][0]
                                                                ["pruned"]),
        "adapter": adapter_dir, "lora_targets": len(targets),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", required=True, help="folder for the base model, the adapter and summary.json")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch", type=int, default=6)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--ratio", type=float, default=0.25, help="Tango retention ratio during training and inference")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--train-samples", type=int, default=120)
    p.add_argument("--eval-samples", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not 0 < args.ratio <= 1:
        p.error(f"--ratio {args.ratio} must be in (0, 1]")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        summary = run(args)
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    acc0, acc1 = summary["accuracy_untrained"], summary["accuracy_trained"]
    print(f"loss {summary['first_loss']:.3f} -> {summary['last_loss']:.3f} in {summary['steps']} steps "
          f"({summary['train_seconds']:.1f} s), video tokens {summary['visual_tokens_before']} -> "
          f"{summary['visual_tokens_after']} (ratio {summary['ratio']})")
    print("| held-out accuracy | pruned | full |\n|---|---|---|")
    print(f"| untrained | {acc0['pruned']:.2f} | {acc0['full']:.2f} |\n| trained | {acc1['pruned']:.2f} | "
          f"{acc1['full']:.2f} |")
    print(f"reloaded adapter + Tango config: same outputs = {summary['reloaded_same_outputs']}, pruned = "
          f"{summary['reloaded_pruned']}")
    ok = (summary["last_loss"] < summary["first_loss"] and not math.isnan(summary["last_loss"])
          and acc1["pruned"] > acc0["pruned"] and acc1["full"] > acc0["full"] and summary["reloaded_same_outputs"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
