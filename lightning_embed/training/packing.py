"""Sequence packing: a batch's queries and documents in one forward pass, with no padding to speak of.

A padded batch computes ``rows x longest`` positions, a third or more of them padding for short texts of
mixed lengths. Packing lays the texts of a step (queries and documents together) end to end into rows as
wide as the longest text, first-fit by decreasing length, and runs the backbone once on those rows with

- a block-diagonal attention mask (causal inside each text for decoders): no text attends to another;
- position ids restarting at 0 for every text, so rotary or learned position embeddings see each text
  exactly as they would alone.

Each text's hidden states are then those of the padded batch (up to float rounding of differently shaped
matmuls), pooled per text and returned in batch order: the same embeddings, loss and gradients, for
fewer computed positions (about 0.95 real instead of 0.6 on the bundled data) and one backbone call per
step instead of two. This is not ``group_by_length``, which changes which examples share a batch.

It needs a backbone whose attention takes a 4-D mask and whose forward takes ``position_ids``
(Hugging Face's eager and sdpa attention, or FlexAttention with a document ``BlockMask`` on GPUs:
:mod:`lightning_embed.training.flex_packing`; not flash-attention-2, which packs through other means):
:func:`packing_problem` says why not otherwise. Position ids must count from 0 in every text, which is
not true of every architecture (RoBERTa's start after the padding index), so
:func:`packing_mismatch` encodes a few texts both ways before training relies on it. Pad slots (the
tail of a row) attend only to themselves, so no attention row is fully masked.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lightning_embed.models.pooling import pool
from lightning_embed.training.flex_packing import FLEX_ATTENTION, document_block_mask
from lightning_embed.training.unpadding import right_padded

Encoding = dict[str, torch.Tensor]


@dataclass(frozen=True)
class PackingPlan:
    """Where every text goes: ``rows[r]`` lists the ``(text, length)`` laid end to end in packed row r."""

    rows: list[list[tuple[int, int]]]
    width: int

    @property
    def positions(self) -> int:
        """Positions computed (rows x width)."""
        return len(self.rows) * self.width

    @property
    def squares(self) -> int:
        """Attention score entries computed per head (rows x width^2)."""
        return len(self.rows) * self.width * self.width


def plan_packing(lengths: Sequence[int]) -> PackingPlan:
    """First-fit-decreasing packing of texts of these lengths into rows as wide as the longest.

    Example:
        >>> plan_packing([5, 2, 3, 4]).rows
        [[(0, 5)], [(3, 4)], [(2, 3), (1, 2)]]
    """
    lengths = [int(n) for n in lengths]
    width = max([1, *lengths])
    rows: list[list[tuple[int, int]]] = []
    free: list[int] = []
    for text in sorted(range(len(lengths)), key=lambda i: -lengths[i]):  # stable: ties in batch order
        n = max(1, lengths[text])  # an empty text still gets one slot (its only token, padding)
        slot = next((r for r, room in enumerate(free) if room >= n), None)
        if slot is None:
            rows.append([])
            free.append(width)
            slot = len(rows) - 1
        rows[slot].append((text, n))
        free[slot] -= n
    return PackingPlan(rows, width)


def packing_problem(model: nn.Module) -> str | None:
    """Why ``model`` cannot run packed rows (None when it can)."""
    from lightning_embed.training.acceleration import FP32_SCORE_ATTENTION

    implementation = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if implementation not in ("eager", "sdpa", FP32_SCORE_ATTENTION, FLEX_ATTENTION):
        return f"its attention implementation is {implementation!r} (packing needs eager, sdpa or flex)"
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "its forward signature cannot be inspected"
    if "position_ids" not in params:
        return f"{type(model).__name__}.forward takes no position_ids"
    return None


#: Largest difference between packed and padded L2-normalised fp32 embeddings that counts as the same.
PACKING_TOLERANCE = 1e-3

_CHECK_TEXTS = ("a", "The quick brown fox jumps over the lazy dog.", "def add(x, y):\n    return x + y",
                "Packing must not change a single embedding, whatever the length.")


def decide_packing(setting: bool | str, backbone: nn.Module, tokenizer, *, causal: bool,
                   other_scheme: bool) -> tuple[bool, str | None]:
    """Resolves ``pack_sequences`` (``True``, ``False`` or ``"auto"``) for a backbone.

    Args:
        setting: the module's ``pack_sequences``.
        backbone: the tuned backbone, with the attention it will train with.
        tokenizer: its tokenizer (for the equivalence check).
        causal: a decoder.
        other_scheme: ``split_by_length`` or GradCache is on (they encode in padded mini-batches).

    Returns:
        ``(pack, note)``: whether to pack, and a line saying why (None when there is nothing to say).

    Raises:
        UserError: ``setting`` is ``True`` and the backbone cannot pack exactly.
    """
    from lightning_embed.errors import UserError
    from lightning_embed.models.backbones import hf_model

    if setting is False:
        return False, None
    if other_scheme:
        return False, "packing: off (split_by_length or GradCache is on)"
    model = hf_model(backbone)
    problem = packing_problem(model) if model is not None else "no Hugging Face model inside the backbone"
    if problem is None:
        mismatch = packing_mismatch(backbone, model.config._attn_implementation, causal, tokenizer)
        if not mismatch <= PACKING_TOLERANCE:
            problem = (f"packed and padded embeddings of the same texts differ by {mismatch:.3g} "
                       f"(> {PACKING_TOLERANCE:g}; position ids not counted from 0?)")
    if problem is None:
        return True, "packing: on (queries and documents in packed rows, checked equal to padded)"
    if setting is True:
        raise UserError(f"pack_sequences cannot pack this backbone: {problem}; set model.pack_sequences: auto "
                        "or false.")
    return False, f"packing: off ({problem})"


def packing_mismatch(backbone: nn.Module, attention: str, causal: bool, tokenizer) -> float:
    """Largest difference between packed and padded (normalised, fp32, eval-mode) embeddings of a few texts.

    Catches backbones that accept a 4-D mask and position ids yet encode a packed text differently (position
    ids not counted from 0, position biases over the whole row, ...).
    """
    device = next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad(), torch.autocast(device_type=device.type, enabled=False):
            halves = (_CHECK_TEXTS[:2], _CHECK_TEXTS[2:])
            encodings = [{k: v.to(device) for k, v in tokenizer(list(t), padding=True, return_tensors="pt").items()
                          if k in ("input_ids", "attention_mask", "token_type_ids")} for t in halves]
            lengths = [enc["attention_mask"].sum(1).tolist() for enc in encodings]
            hidden, mask, _ = pack_and_encode(backbone, attention, causal, encodings, lengths,
                                              tokenizer.pad_token_id or 0)
            packed = F.normalize(pool(hidden, mask, "mean"), dim=-1)
            padded = []
            for enc in encodings:
                out = backbone(**enc)
                hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
                padded.append(F.normalize(pool(hidden, enc["attention_mask"], "mean"), dim=-1))
            return float((packed - torch.cat(padded)).abs().max())
    finally:
        backbone.train(was_training)


def pack_and_encode(backbone: nn.Module, attention: str, causal: bool, encodings: Sequence[Encoding],
                    lengths: Sequence[Sequence[int]],
                    pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor, PackingPlan]:
    """Runs ``backbone`` once over the packed texts of several padded encodings.

    Args:
        backbone: takes ``input_ids``, a 4-D ``attention_mask`` and ``position_ids``; returns
            ``last_hidden_state`` (or a tuple whose first item it is).
        attention: the backbone's attention implementation (``sdpa`` takes a boolean mask,
            :data:`~lightning_embed.training.flex_packing.FLEX_ATTENTION` a document ``BlockMask``, the eager ones an
            additive float mask).
        causal: a decoder (each token sees only earlier tokens of its own text).
        encodings: padded batches (``input_ids``, ``attention_mask``, maybe ``token_type_ids``), right or
            left padded.
        lengths: real length of every row of every encoding (host-side, so no device sync).
        pad_token_id: filler for the tail of each packed row.

    Returns:
        ``(hidden, mask, plan)``: hidden states of every text of every encoding in order, right-padded to
        the longest, shape (texts, longest, H); the matching right-padded attention mask; the plan.
    """
    device = encodings[0]["input_ids"].device
    flat_lengths = [int(n) for ls in lengths for n in ls]
    plan = plan_packing(flat_lengths)
    width = plan.width
    # Where each text's tokens sit in the flattened concatenation of the encodings' input_ids.
    starts: list[int] = []
    offset = 0
    for enc, ls in zip(encodings, lengths):
        rows, cols = enc["input_ids"].shape
        left = not right_padded(enc["attention_mask"])
        for r, n in enumerate(ls):
            starts.append(offset + r * cols + (cols - int(n) if left else 0))
        offset += rows * cols
    # Index arithmetic on the host, vectorised over slots (the loops run over texts only).
    texts = len(flat_lengths)
    row_of, col_of, seg_of, slots_of = [0] * texts, [0] * texts, [0] * texts, [1] * texts
    for r, row in enumerate(plan.rows):
        col = 0
        for s, (text, n) in enumerate(row):
            row_of[text], col_of[text], seg_of[text], slots_of[text] = r, col, s, n
            col += n
    n = torch.tensor(slots_of, dtype=torch.long)
    text_of = torch.repeat_interleave(torch.arange(texts), n)
    within = torch.arange(len(text_of)) - torch.repeat_interleave(torch.cumsum(n, 0) - n, n)
    slot = (torch.tensor(row_of) * width + torch.tensor(col_of))[text_of] + within
    real = within < torch.tensor(flat_lengths, dtype=torch.long)[text_of]  # an empty text's slot stays filler
    total = len(plan.rows) * width
    source = torch.full((total,), -1, dtype=torch.long)  # flat source index per packed slot (-1: filler)
    source[slot[real]] = torch.tensor(starts)[text_of[real]] + within[real]
    position = torch.zeros(total, dtype=torch.long)
    position[slot] = within
    segment = torch.full((total,), -1, dtype=torch.long)
    segment[slot] = torch.tensor(seg_of)[text_of]
    longest = max([1, *flat_lengths])
    gather = torch.zeros(texts, longest, dtype=torch.long)  # packed slot of each text's j-th token
    gather[text_of, within] = slot
    source_t = source.to(device, non_blocking=True)
    filler = source_t < 0
    packed: Encoding = {}
    for key, value in encodings[0].items():
        if key == "attention_mask" or value.dim() != 2:
            continue
        flat = torch.cat([enc[key].reshape(-1) for enc in encodings])
        fill = pad_token_id if key == "input_ids" else 0
        packed[key] = flat[source_t.clamp_min(0)].masked_fill(filler, fill).view(len(plan.rows), width)
    segment_t = segment.to(device, non_blocking=True).view(len(plan.rows), width)
    # Filler slots (segment -1) see each other only: no fully masked row, nothing leaks into texts.
    if attention == FLEX_ATTENTION:  # the kernel skips the tiles the mask empties; no dense mask
        mask = document_block_mask(segment_t, causal)
    else:
        allowed = segment_t[:, :, None] == segment_t[:, None, :]
        if causal:
            allowed &= torch.ones(width, width, dtype=torch.bool, device=device).tril()
        mask = allowed[:, None]
        if attention != "sdpa":  # eager attentions add the mask to the scores
            mask = torch.zeros(mask.shape, device=device).masked_fill(~mask, torch.finfo(torch.float32).min)
    out = backbone(**packed, attention_mask=mask,
                   position_ids=position.to(device, non_blocking=True).view(len(plan.rows), width))
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    index = gather.to(device, non_blocking=True)
    unpacked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, index.view(-1)).view(texts, longest, -1)
    right_mask = torch.arange(longest, device=device)[None, :] < torch.tensor(flat_lengths, device=device)[:, None]
    return unpacked, right_mask.long(), plan
