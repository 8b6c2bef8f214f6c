"""Pictures of what was kept, drawn with PIL: one tile per engine frame, a label per tile and a legend.

- `kept_frames_png`: the real sampled frames (`tango-plugin run --picture`), each resized to its token grid, kept
  tokens at full colour with a green outline, pruned tokens dimmed.
- `kept_map_png`: tokens without frames (`demo`, `prune`): saliency as grey levels, kept tokens in green.

`sheet_layout` says where every tile and token cell lies, so a caller (or a test) can find a token's pixels.
Pillow is imported inside the functions (the `video` / `dev` extras).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

KEPT_RGB = (40, 200, 70)  # kept tokens: outline (frames) or fill (saliency map)
DIM = 0.3  # pruned tokens of a frame keep this fraction of their brightness
PAD, LABEL_H, LEGEND_H = 4, 14, 22


@dataclass
class SheetLayout:
    """Where the tiles of a picture lie.

    Attributes:
        frames: number of tiles (engine frames).
        grid_hw: (H, W) tokens per tile.
        cell: pixels per token side.
        columns: tiles per row.
        label_h: pixels above each tile for its label (0: none).
        size: (width, height) of the whole picture.
    """

    frames: int
    grid_hw: Tuple[int, int]
    cell: int
    columns: int
    label_h: int
    size: Tuple[int, int]

    def tile_origin(self, t: int) -> Tuple[int, int]:
        """(x, y) of the top-left pixel of tile `t`'s token grid."""
        H, W = self.grid_hw
        row, col = divmod(t, self.columns)
        return PAD + col * (W * self.cell + PAD), PAD + row * (H * self.cell + PAD + self.label_h) + self.label_h

    def cell_box(self, t: int, i: int) -> Tuple[int, int, int, int]:
        """(x0, y0, x1, y1) pixel box (end exclusive) of token `i` (row-major in the grid) of tile `t`."""
        x, y = self.tile_origin(t)
        r, c = divmod(i, self.grid_hw[1])
        return x + c * self.cell, y + r * self.cell, x + (c + 1) * self.cell, y + (r + 1) * self.cell


def sheet_layout(frames: int, grid_hw: Sequence[int], cell: int, columns: Optional[int] = None,
                 labels: bool = True, legend: bool = True) -> SheetLayout:
    """The layout of a picture of `frames` tiles of `grid_hw` tokens (`columns` default: about square)."""
    H, W = int(grid_hw[0]), int(grid_hw[1])
    cols = max(1, min(frames, columns or math.ceil(frames ** 0.5)))
    rows = (frames + cols - 1) // cols
    label_h = LABEL_H if labels else 0
    width = max(PAD + cols * (W * cell + PAD), 260 if legend else 0)
    height = PAD + rows * (H * cell + PAD + label_h) + (LEGEND_H if legend else 0)
    return SheetLayout(frames, (H, W), cell, cols, label_h, (width, height))


def _kept_mask(kept_indices: torch.Tensor, T: int, H: int, W: int) -> np.ndarray:
    kept = torch.zeros(T * H * W, dtype=torch.bool)
    kept[torch.as_tensor(kept_indices).long().cpu()] = True
    return kept.view(T, H, W).numpy()


def _legend(draw, layout: SheetLayout, items: List[Tuple[Tuple[int, int, int], str]], outline: bool) -> None:
    x, y = PAD, layout.size[1] - LEGEND_H + 4
    for colour, text in items:
        box = (x, y, x + 12, y + 12)
        if outline:
            draw.rectangle(box, fill=colour[0], outline=colour[1], width=2)
        else:
            draw.rectangle(box, fill=colour)
        draw.text((x + 16, y), text, fill=(0, 0, 0))
        x += 22 + int(draw.textlength(text)) + 12


def _fit(draw, texts: Sequence[str], width: int) -> str:
    """The first of `texts` (longest first) that fits in `width` pixels, else the last one."""
    for text in texts:
        if draw.textlength(text) <= width:
            return text
    return texts[-1]


def _save(image, path: str) -> str:
    image.save(path, format="PNG")
    return path


def kept_map_png(path: str, saliency: torch.Tensor, grid_hw: Sequence[int], kept_indices: torch.Tensor,
                 cell: int = 8, columns: Optional[int] = None) -> str:
    """Draw the kept tokens of a (T, L) video grid to `path` (PNG) and return it.

    Args:
        saliency: (T, L) scores (shown as grey levels, normalised per frame).
        grid_hw: (H, W) with L == H * W.
        kept_indices: flat indices t * L + i that were kept (shown in green).
        cell: pixels per token.
        columns: frames per row of the sheet (default: about square).
    """
    from PIL import Image, ImageDraw

    T, L = saliency.shape
    H, W = int(grid_hw[0]), int(grid_hw[1])
    kept = _kept_mask(kept_indices, T, H, W)
    sal = saliency.detach().float().cpu()
    lo, hi = sal.min(dim=1, keepdim=True).values, sal.max(dim=1, keepdim=True).values
    grey = (40 + 140 * ((sal - lo) / (hi - lo).clamp(min=1e-12))).view(T, H, W).to(torch.uint8).numpy()
    layout = sheet_layout(T, (H, W), cell, columns)
    image = Image.new("RGB", layout.size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for t in range(T):
        tile = np.repeat(grey[t][:, :, None], 3, axis=2)
        tile[kept[t]] = KEPT_RGB
        tile = tile.repeat(cell, 0).repeat(cell, 1)
        x, y = layout.tile_origin(t)
        image.paste(Image.fromarray(np.ascontiguousarray(tile)), (x, y))
        k = int(kept[t].sum())
        draw.text((x, y - layout.label_h), _fit(draw, [f"frame {t}: {k} kept", f"{t}: {k} kept", f"{t}:{k}"],
                                                W * cell), fill=(0, 0, 0))
    _legend(draw, layout, [(KEPT_RGB, f"kept ({int(kept.sum())})"),
                           ((110, 110, 110), f"pruned ({T * L - int(kept.sum())}; grey = saliency)")], outline=False)
    return _save(image, path)


def kept_frames_png(path: str, frames: Sequence[np.ndarray], grid_hw: Sequence[int], kept_indices: torch.Tensor,
                    labels: Optional[Sequence[str]] = None, cell: Optional[int] = None,
                    columns: Optional[int] = None) -> Tuple[str, SheetLayout]:
    """Draw the kept tokens over the frames themselves to `path` (PNG).

    Args:
        frames: one (h, w, 3) uint8 RGB image per engine frame (Qwen: the first frame of each temporal patch).
        grid_hw: (H, W) tokens per frame; each frame is resized to W * cell x H * cell (the grid's aspect).
        kept_indices: flat indices t * H * W + i that were kept: drawn at full colour with a green outline; the
            others are dimmed.
        labels: one label per tile (e.g. the frame index and time), drawn above it.
        cell: pixels per token (default: tiles about 160 pixels wide, at least 6 pixels a token).
        columns: tiles per row (default: about square).

    Returns:
        (path, layout): the file written and where its tiles and cells are (`SheetLayout.cell_box`).
    """
    from PIL import Image, ImageDraw

    T = len(frames)
    H, W = int(grid_hw[0]), int(grid_hw[1])
    if labels is not None and len(labels) != T:
        raise ValueError(f"{len(labels)} labels for {T} frames")
    cell = cell or max(6, -(-160 // W))
    kept = _kept_mask(kept_indices, T, H, W)
    layout = sheet_layout(T, (H, W), cell, columns)
    image = Image.new("RGB", layout.size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for t in range(T):
        frame = Image.fromarray(np.ascontiguousarray(np.asarray(frames[t], dtype=np.uint8))).convert("RGB")
        tile = np.asarray(frame.resize((W * cell, H * cell), Image.BILINEAR)).astype(np.float32)
        dim = np.where(kept[t], 1.0, DIM).repeat(cell, 0).repeat(cell, 1)[:, :, None]
        x, y = layout.tile_origin(t)
        image.paste(Image.fromarray((tile * dim).round().astype(np.uint8)), (x, y))
        for i in np.flatnonzero(kept[t].reshape(-1)):
            x0, y0, x1, y1 = layout.cell_box(t, int(i))
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=KEPT_RGB, width=1 if cell < 12 else 2)
        text = labels[t] if labels is not None else f"frame {t}"
        k = int(kept[t].sum())
        draw.text((x, y - layout.label_h), _fit(draw, [f"{text}: {k}/{H * W}", text], W * cell), fill=(0, 0, 0))
    n = int(kept.sum())
    _legend(draw, layout, [(((220, 220, 220), KEPT_RGB), f"kept ({n})"),
                           (((66, 66, 66), (66, 66, 66)), f"pruned, dimmed ({T * H * W - n})")], outline=True)
    return _save(image, path), layout


__all__ = ["kept_map_png", "kept_frames_png", "sheet_layout", "SheetLayout", "KEPT_RGB", "DIM"]
