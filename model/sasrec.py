"""The sequence model: SASRec (Kang & McAuley 2018) with switchable time, repeat and
(in training) availability-aware negatives; GRU and MF encoders as baselines.

Items are streamers. Inputs are the integer tensors described in `liverank.model.features`
(built by numpy code shared with serving); `forward` scores C candidates from the last
window position and is what `liverank export` writes to ONNX.

* ``arch="liverank"``: causal self-attention over the last L watches (pre-LN blocks,
  learned positions, item embeddings shared with the output layer), plus
  - time: hour-of-day / weekday embeddings of each watch and of the query step, a per-head
    attention bias for the bucketed gap between each past watch and the position's query
    step (the request's step at the last position), and an embedding of the gap since the
    last watch added to the user vector;
  - repeat: a candidate the user watched inside the window gets embeddings (and scalar
    biases) of its recency bucket and its count bucket added before the dot product.
* ``arch="sasrec"``: the same encoder with time and repeat off (plain SASRec).
* ``arch="gru"``: a GRU over the window instead of attention (GRU4Rec-style).
* ``arch="mf"``: the user vector is the mean of the window's item factors (FISM-style
  matrix factorisation; the model sees no user id, so the window stands for the user).

Masking: a padding key gets a large *finite* negative logit and every position may attend
to itself, so an all-padding window never softmaxes over nothing (no NaN, see
docs/platform-notes.md#torch-to-onnx).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from .features import TimeEncoding

ARCHS = ("liverank", "sasrec", "gru", "mf")
MASKED = -1e9


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "liverank"
    n_items: int = 0  # known streamers; vocabulary = n_items + 2 (padding, OOV)
    window_len: int = 16
    dim: int = 64
    blocks: int = 2
    heads: int = 2
    dropout: float = 0.2
    time: bool = True
    repeat: bool = True
    n_hours: int = 24
    n_days: int = 7
    n_gaps: int = len(TimeEncoding().gap_boundaries) + 1
    n_counts: int = len(TimeEncoding().count_boundaries) + 1

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}: use one of {ARCHS}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if self.window_len < 1:
            raise ValueError(f"window_len must be >= 1, got {self.window_len}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}")
        return cls(**raw)


class _Rows(torch.autograd.Function):
    """``weight[idx]`` with `nn.Embedding`'s gradient (none for the padding row), summed by
    one ``index_add_``. torch's CPU embedding backward adds the gradient row by row through
    a generic kernel: for the ~70k window and candidate rows of a training batch it was the
    largest single cost of a step, about 8 times this."""

    @staticmethod
    def forward(ctx: Any, weight: Tensor, idx: Tensor,  # type: ignore[override]
                padding_idx: int | None) -> Tensor:
        ctx.save_for_backward(idx)
        ctx.rows, ctx.padding_idx = weight.shape[0], padding_idx
        return weight.index_select(0, idx.reshape(-1)).view(*idx.shape, weight.shape[1])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (idx,) = ctx.saved_tensors
        out = grad.new_zeros(ctx.rows, grad.shape[-1])
        out.index_add_(0, idx.reshape(-1), grad.reshape(-1, grad.shape[-1]))
        if ctx.padding_idx is not None:
            out[ctx.padding_idx] = 0
        return out, None, None


class Block(nn.Module):
    """Pre-LN transformer block with an explicit attention (exports to plain ONNX ops)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, keep: Tensor, bias: Tensor | None,
                last_only: bool = False) -> Tensor:
        """(B, L, D) -> (B, L, D); with ``last_only`` (B, 1, D), the last position's output
        alone: every position's keys and values, the last one's query (what serving reads
        of the last block; the other positions' attention, projection and feed-forward are
        15/16 of the block's work at L = 16)."""
        b, length, dim = x.shape  # (B, L, D)
        q, k, v = self.qkv(self.ln1(x)).split(dim, dim=-1)
        if last_only:
            q, x = q[:, -1:], x[:, -1:]
            keep = keep[..., -1:, :]
            bias = None if bias is None else bias[..., -1:, :]
        rows = q.shape[1]
        q = q.reshape(b, rows, self.heads, -1).transpose(1, 2)
        k, v = (t.reshape(b, length, self.heads, -1).transpose(1, 2) for t in (k, v))
        att = q @ k.transpose(-2, -1) / math.sqrt(dim // self.heads)  # (B, H, rows, L)
        if bias is not None:
            att = att + bias
        att = att.masked_fill(~keep, MASKED).softmax(-1)
        y = (self.drop(att) @ v).transpose(1, 2).reshape(b, rows, dim)
        x = x + self.drop(self.proj(y))
        return x + self.drop(self.ffn(self.ln2(x)))


class SeqRec(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, vocab = cfg.dim, cfg.n_items + 2
        self.item_emb = nn.Embedding(vocab, d, padding_idx=0)
        self.drop = nn.Dropout(cfg.dropout)
        if cfg.arch in ("liverank", "sasrec"):
            self.pos_emb = nn.Embedding(cfg.window_len, d)
            self.blocks = nn.ModuleList(Block(d, cfg.heads, cfg.dropout)
                                        for _ in range(cfg.blocks))
            self.final_ln = nn.LayerNorm(d)
        elif cfg.arch == "gru":
            self.gru = nn.GRU(d, d, batch_first=True)
        else:
            self.ctx_emb = nn.Embedding(vocab, d, padding_idx=0)
        if cfg.time:
            self.hour_emb = nn.Embedding(cfg.n_hours + 1, d, padding_idx=0)
            self.day_emb = nn.Embedding(cfg.n_days + 1, d, padding_idx=0)
            self.q_hour_emb = nn.Embedding(cfg.n_hours + 1, d, padding_idx=0)
            self.q_day_emb = nn.Embedding(cfg.n_days + 1, d, padding_idx=0)
            self.gap_out_emb = nn.Embedding(cfg.n_gaps + 1, d, padding_idx=0)
            self.gap_bias = nn.Embedding(cfg.n_gaps + 1, cfg.heads, padding_idx=0)
        if cfg.repeat:
            self.rec_emb = nn.Embedding(cfg.n_gaps + 1, d, padding_idx=0)
            self.cnt_emb = nn.Embedding(cfg.n_counts + 1, d, padding_idx=0)
            self.rec_bias = nn.Embedding(cfg.n_gaps + 1, 1, padding_idx=0)
            self.cnt_bias = nn.Embedding(cfg.n_counts + 1, 1, padding_idx=0)
        self.apply(_init)

    def _fast_grad(self) -> bool:
        """Training steps take the faster-to-differentiate forms (`_embed`, the score's sum):
        the same values; inference, tracing and ONNX export keep the plain ones."""
        return self.training and torch.is_grad_enabled() and not torch.jit.is_tracing()

    def _embed(self, table: nn.Embedding, idx: Tensor) -> Tensor:
        if self._fast_grad():
            return _Rows.apply(table.weight, idx, table.padding_idx)  # type: ignore[no-any-return]
        return table(idx)  # type: ignore[no-any-return]

    def encode(self, items: Tensor, watch_time: Tensor, gaps: Tensor,
               item_vecs: Tensor | None = None, last_only: bool = False) -> Tensor:
        """(B, L) items, (B, L, 2) watch time, (B, L, L) gap buckets -> (B, L, D);
        ``item_vecs``: the items' embeddings when already looked up; ``last_only``: the
        attention encoder's last block computes the last position alone, (B, 1, D) (other
        encoders return every position)."""
        cfg = self.cfg
        length = items.shape[1]
        real = items != 0
        emb = self._embed
        x = emb(self.item_emb, items) if item_vecs is None else item_vecs
        if cfg.arch == "mf":
            ctx = emb(self.ctx_emb, items)  # (B, L, D); causal mean over real entries
            pos = torch.arange(length, device=items.device)
            causal = (pos[None, :] <= pos[:, None]).float()  # (T, J)
            w = causal[None] * real[:, None, :].float()  # (B, T, J)
            return (w @ ctx) / w.sum(-1, keepdim=True).clamp(min=1.0)
        if cfg.time:
            x = x + emb(self.hour_emb, watch_time[..., 0]) + emb(self.day_emb, watch_time[..., 1])
        if cfg.arch == "gru":
            out, _ = self.gru(self.drop(x))
            return out
        x = x * math.sqrt(cfg.dim) + self.pos_emb.weight[None, :length]
        x = self.drop(x)
        # Built from comparisons: onnxruntime has no boolean EyeLike/Trilu kernels.
        pos = torch.arange(length, device=items.device)
        eye, causal = pos[None, :] == pos[:, None], pos[None, :] <= pos[:, None]  # (L, L)
        keep = ((causal[None] & real[:, None, :]) | eye[None])[:, None]  # (B, 1, L, L)
        bias = emb(self.gap_bias, gaps).permute(0, 3, 1, 2) if cfg.time else None  # (B, H, L, L)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            x = block(x, keep, bias, last_only=last_only and i == last)
        return self.final_ln(x)

    def user(self, h: Tensor, query_time: Tensor, gap_self: Tensor) -> Tensor:
        """(B, T, D) hidden, (B, T, 2) query time, (B, T) gap since last watch -> user vec."""
        if not self.cfg.time:
            return h
        emb = self._embed
        return (h + emb(self.q_hour_emb, query_time[..., 0])
                + emb(self.q_day_emb, query_time[..., 1]) + emb(self.gap_out_emb, gap_self))

    def score(self, u: Tensor, cand_items: Tensor, cand_repeat: Tensor,
              cand_vecs: Tensor | None = None) -> Tensor:
        """(..., D) user, (..., C) candidates, (..., C, 2) repeat -> (..., C) scores;
        ``cand_vecs``: the candidates' item embeddings when already looked up."""
        # u . (item + recency + count) computed as one batched matmul over the gathered item
        # vectors plus small per-bucket tables: the (..., C, D) sums never materialise,
        # which is most of the serving cost with thousands of candidates.
        cand = self._embed(self.item_emb, cand_items) if cand_vecs is None else cand_vecs
        if self._fast_grad():  # the same dot products; bmm's backward is slow for C = 1 + N
            s = (cand * u.unsqueeze(-2)).sum(-1)
        else:
            s = (u.unsqueeze(-2) @ cand.transpose(-1, -2)).squeeze(-2)  # (..., C)
        if not self.cfg.repeat:
            return s
        rec, cnt = cand_repeat[..., 0], cand_repeat[..., 1]
        rec_table = u @ self.rec_emb.weight.T + self.rec_bias.weight.T  # (..., n_gaps + 1)
        cnt_table = u @ self.cnt_emb.weight.T + self.cnt_bias.weight.T
        return s + rec_table.gather(-1, rec) + cnt_table.gather(-1, cnt)

    def forward(self, items: Tensor, watch_time: Tensor, query_time: Tensor, gaps: Tensor,
                cand_items: Tensor, cand_repeat: Tensor) -> Tensor:
        """Scores (B, C) of the candidates for the last window position (serving/export)."""
        h = self.encode(items, watch_time, gaps, last_only=True)[:, -1]  # (B, D)
        u = self.user(h, query_time[:, -1], gaps[:, -1, -1])
        return self.score(u, cand_items, cand_repeat)

    def all_positions(self, items: Tensor, watch_time: Tensor, query_time: Tensor,
                      gaps: Tensor, item_vecs: Tensor | None = None) -> Tensor:
        """User vectors (B, L, D) for every position (training: position t predicts t+1)."""
        h = self.encode(items, watch_time, gaps, item_vecs)
        eye = torch.eye(items.shape[1], dtype=gaps.dtype, device=gaps.device)
        return self.user(h, query_time, (gaps * eye).sum(-1))

    def position_scores(self, items: Tensor, watch_time: Tensor, query_time: Tensor,
                        gaps: Tensor, cand_items: Tensor, cand_repeat: Tensor) -> Tensor:
        """Training: (B, L, C) scores of every position's candidates, `all_positions`
        then `score`, with the window's and the candidates' item vectors looked up at once:
        one dense gradient of the item table per step instead of two to fill and add (22 MB
        each at 88k items, and fresh memory from the system as often as not)."""
        n = items.numel()
        vecs = self._embed(self.item_emb, torch.cat([items.reshape(-1),
                                                     cand_items.reshape(-1)]))
        u = self.all_positions(items, watch_time, query_time, gaps,
                               vecs[:n].view(*items.shape, -1))
        return self.score(u, cand_items, cand_repeat, vecs[n:].view(*cand_items.shape, -1))


def _init(module: nn.Module) -> None:
    if isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
