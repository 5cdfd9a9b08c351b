"""A tiny vision-language model with RANDOM weights, built in code, to exercise the image path.

No VLM ships in any package here (DESIGN.md §5), so this model exists to test the mechanics end to end:
image data URL → pixels → vision encoder → projector → rows in the decoder's input → generated text.
Its answers are meaningless; never present them as quality.

Layout (Qwen2-VL-like, at toy sizes)::

    pixels [N, 3, 64, 64] --patch conv 8x8--> [N, 64, Dv] --2 encoder blocks--> --2x2 merge--> [N, 16, 4Dv]
        --projector (Linear, GELU, Linear)--> [N, 16, D]   = 16 image rows per image

The decoder is the runtime's :class:`runtime.model.AudioLM` at tiny sizes over SmolLM2's tokenizer. The
vocabulary gets ``max_image_rows`` extra ids after the text ids: prompt id ``image_offset + j`` means
"row j of the images being prefilled", so image rows travel through the same prefill (and the same
chunking, positions and KV cache) as text. They are never sampled (their logits are masked).
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import io
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from runtime.chat_api import ChatMessage, ImagePart
from runtime.config import LMConfig
from runtime.llm.image_header import ImageHeaderError, image_size
from runtime.llm.prompt import ChatRequestError
from runtime.model import AudioLM
from runtime.state import KVCache

MAX_IMAGE_BYTES = 8 * 1024 * 1024
MAX_IMAGE_PIXELS = 4096 * 4096  # decoded: 48 MiB of RGB; the model sees 64 x 64 of it anyway


@dataclass(frozen=True)
class VisionConfig:
    image_size: int = 64
    patch: int = 8
    d_vision: int = 64
    n_layers: int = 2
    n_heads: int = 4
    merge: int = 2                  # merge x merge patches into one image row
    max_image_rows: int = 256       # image rows one prompt may hold (16 per image -> 16 images)

    @property
    def rows_per_image(self) -> int:
        side = self.image_size // self.patch // self.merge
        return side * side


class VisionEncoder(nn.Module):
    """Patch embedding + pre-norm transformer encoder: pixels [N, 3, H, W] -> [N, P, Dv]."""

    def __init__(self, v: VisionConfig) -> None:
        super().__init__()
        self.v = v
        self.patch_embed = nn.Conv2d(3, v.d_vision, v.patch, v.patch)
        n = (v.image_size // v.patch) ** 2
        self.pos = nn.Parameter(torch.zeros(n, v.d_vision))
        self.blocks = nn.ModuleList(nn.TransformerEncoderLayer(v.d_vision, v.n_heads, 4 * v.d_vision,
                                                               dropout=0.0, batch_first=True, norm_first=True)
                                    for _ in range(v.n_layers))
        self.norm = nn.LayerNorm(v.d_vision)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels).flatten(2).transpose(1, 2) + self.pos    # [N, P, Dv]
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


class Projector(nn.Module):
    """Merge ``merge x merge`` neighbouring patches and map them to the decoder width: -> [N, R, D]."""

    def __init__(self, v: VisionConfig, d_model: int) -> None:
        super().__init__()
        self.v = v
        self.fc1 = nn.Linear(v.merge * v.merge * v.d_vision, d_model)
        self.fc2 = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, d = x.shape
        side, m = self.v.image_size // self.v.patch, self.v.merge
        x = x.view(n, side // m, m, side // m, m, d).permute(0, 1, 3, 2, 4, 5).reshape(n, -1, m * m * d)
        return self.fc2(nn.functional.gelu(self.fc1(x)))


class TinyVLM(AudioLM):
    """:class:`AudioLM` whose input ids ``>= image_offset`` read rows of :attr:`image_rows`."""

    def __init__(self, cfg: LMConfig, v: VisionConfig) -> None:
        super().__init__(cfg)
        self.vision_config = v
        self.vision = VisionEncoder(v)
        self.projector = Projector(v, cfg.d_model)
        self.image_offset = cfg.text_vocab_size
        self.image_rows: torch.Tensor | None = None      # [R, D] while a prompt with images is prefilled

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [N, 3, H, W] in [-1, 1] -> image rows [N * rows_per_image, D]."""
        dtype = self.model.embed_tokens.weight.dtype
        return self.projector(self.vision(pixels.to(dtype))).flatten(0, 1)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        b, t = tokens.shape
        if positions is None:
            positions = torch.arange(t, device=tokens.device).expand(b, t)
        x = self.model.embed_tokens(tokens)                                          # [B, T, D]
        if self.image_rows is not None:   # only during a prefill with images: decode steps never sync here
            is_img = tokens >= self.image_offset
            rows = self.image_rows[(tokens - self.image_offset).clamp(0, self.image_rows.shape[0] - 1)]
            x = torch.where(is_img[..., None], rows.to(x.dtype), x)
        rope = self.rotary(positions, x.dtype)
        mask = self._mask(positions, cache)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, rope, mask, positions, None if cache is None else cache.layer(i))
        return self.model.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        out = self.lm_head(hidden)
        return out.index_fill(-1, self._image_ids(out.device), float("-inf"))

    def _image_ids(self, device) -> torch.Tensor:
        return torch.arange(self.image_offset, self.config.vocab_size, device=device)


def tiny_vlm_config(text_vocab: int, v: VisionConfig = VisionConfig()) -> LMConfig:
    vocab = text_vocab + v.max_image_rows
    return LMConfig(vocab_size=vocab, text_vocab_size=text_vocab, audio_offset=vocab, linguistic_size=0,
                    semantic_size=0, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=160,
                    max_seq_len=2048, n_mtp=0, qkv_bias=True, tie_embeddings=False, rope_theta=10_000.0)


def build_tiny_vlm(text_vocab: int, seed: int = 1234, v: VisionConfig = VisionConfig()) -> TinyVLM:
    """Random weights from ``seed`` (normal(0, 0.02), zero biases, unit norm gains)."""
    gen = torch.Generator().manual_seed(seed)
    model = TinyVLM(tiny_vlm_config(text_vocab, v), v)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("norm1.weight") or name.endswith("norm2.weight"):
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return model.eval()


# ---- images ---------------------------------------------------------------------------------------------
def decode_image(url: str, size: int) -> np.ndarray:
    """A ``data:image/...;base64,`` URL -> RGB uint8 [size, size, 3] (decoded and scaled with PyAV).
    Sizes are checked before each step: the base64 length before decoding it, the pixel count in the
    image's header (`image_header`) before PyAV decodes anything."""
    header, sep, payload = url.partition(",")
    if not sep or not header.startswith("data:image/") or not header.endswith(";base64"):
        raise ChatRequestError("image_url must be a data:image/...;base64,... URL")
    if len(payload) > 4 * (MAX_IMAGE_BYTES // 3 + 1):
        raise ChatRequestError(f"image is larger than {MAX_IMAGE_BYTES} bytes")
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ChatRequestError("image data URL is not valid base64") from None
    if len(raw) > MAX_IMAGE_BYTES:
        raise ChatRequestError(f"image is larger than {MAX_IMAGE_BYTES} bytes")
    try:
        _, width, height = image_size(raw)
    except ImageHeaderError as exc:
        raise ChatRequestError(f"could not read the image: {exc}; send PNG, JPEG, GIF or WebP") from None
    if width * height > MAX_IMAGE_PIXELS or not width or not height:
        raise ChatRequestError(f"image is {width} x {height} pixels; at most {MAX_IMAGE_PIXELS} pixels "
                               f"(4096 x 4096) are accepted")
    import av

    try:
        with av.open(io.BytesIO(raw)) as container:
            frame = next(container.decode(video=0))
            return frame.reformat(width=size, height=size, format="rgb24").to_ndarray()
    except (av.FFmpegError, StopIteration, ValueError, IndexError) as exc:
        raise ChatRequestError(f"could not decode the image ({type(exc).__name__}); send PNG or JPEG") from None


class VisionInput:
    """The engine's hook for a VLM: turns image parts into prompt ids and loads their rows at prefill."""

    def __init__(self, model: TinyVLM) -> None:
        self.model = model
        self.image_offset = model.image_offset

    def prepare(self, messages: Sequence[ChatMessage]):
        """Decode every image now (bad images fail the request before it is queued); return the
        ``image_pieces`` callback for the chat format and the closure the engine thread runs before
        the prefill."""
        v = self.model.vision_config
        parts = [p for m in messages if not isinstance(m.content, str) for p in m.content if isinstance(p, ImagePart)]
        if len(parts) * v.rows_per_image > v.max_image_rows:  # counted before any image is decoded
            raise ChatRequestError(f"at most {v.max_image_rows // v.rows_per_image} images per request")
        images = [decode_image(p.url, v.image_size) for p in parts]
        pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0   # [N, 3, H, W]
        counter = iter(range(len(images)))

        def image_pieces(_: ImagePart) -> list[int]:
            k = next(counter)
            return list(range(self.image_offset + k * v.rows_per_image, self.image_offset + (k + 1) * v.rows_per_image))

        def load() -> None:
            self.model.image_rows = self.model.encode_images(pixels)

        return image_pieces, load

    def clear(self) -> None:
        self.model.image_rows = None


def load_tiny_vlm(model_id: str = "tiny-vlm-random"):
    """Registry entry: the random tiny VLM over SmolLM2's tokenizer, on the torch engine."""
    from runtime.llm.chat_format import chat_format
    from runtime.llm.embedded import checkpoint_dir
    from runtime.llm.tokenizer import TextTokenizer
    from runtime.llm.torch_engine import EngineOptions, TorchChatEngine

    tok = TextTokenizer(checkpoint_dir("smollm2-135m-instruct"))
    model = build_tiny_vlm(tok.vocab_size)
    fmt = dataclasses.replace(chat_format("smollm2", tok),
                              default_system="You are a tiny test model with random weights.")
    return TorchChatEngine(model, tok, fmt, model_id, EngineOptions(slots=2, capacity=1024),
                           vision=VisionInput(model), description="RANDOM-weight tiny VLM (tests only)")
