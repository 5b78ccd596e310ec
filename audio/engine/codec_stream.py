"""Exact streaming decode of the 12 Hz codec: the decoder run piece by piece with its state carried between pieces.

The decoder is causal throughout, but not short-sighted: 8 stacked transformer layers with a 72-frame sliding window
plus the convolutions see ~580 frames back, so re-decoding a piece with 72 frames of left context (what
`chunked_decode`'s approximation does, with 25) leaves ~4e-3 at a seam on the real structure. `StatefulDecoder`
instead keeps, between pieces, what the next frames need and nothing more:

- each transformer layer's rotated K and V of the last `sliding_window - 1` frames (a query at position p attends
  to keys p - window < k <= p, transformers' `sliding_window_overlay`), and the absolute frame position for rope;
- each causal convolution's last `kernel - stride` inputs (all of them have stride 1: the zeros the whole decode
  pads with on the left are the initial tail);
- each transposed convolution's last input (kernel <= 2 x stride: only the previous input overlaps the next outputs;
  the whole decode trims the right overlap, a piece emits it once the next input is known).

Everything else is pointwise per time step. So `decode(piece)` returns exactly the samples the whole decode gives
those frames (float rounding aside: <= 1e-5, `tests/test_codec_stream.py`), at a cost proportional to the piece.
It mirrors `Qwen3TTSTokenizerV2Decoder.forward` of qwen-tts 0.1.1 (pinned by `tests/test_engine_pin.py`); a module
it does not know is a `ModelError`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from audio.errors import ModelError


class StatefulDecoder:
    """One row's codec decoder state; `decode` pieces of codes [1, groups, frames] in order."""

    def __init__(self, decoder: Any):
        from qwen_tts.core.tokenizer_12hz import modeling_qwen3_tts_tokenizer_v2 as codec

        self._codec = codec
        self.decoder = decoder
        transformer = decoder.pre_transformer
        self.window = int(transformer.config.sliding_window)
        self.frames = 0  # frames decoded so far: the next frame's rope position
        self._kv: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(transformer.layers)
        self._tails: dict[int, torch.Tensor] = {}  # id(module) -> the inputs the next piece's outputs still need

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Audio [frames * upsample] of `codes` [1, groups, frames], continuing the frames decoded before."""
        decoder = self.decoder
        hidden = decoder.quantizer.decode(codes)
        hidden = self._conv(decoder.pre_conv, hidden).transpose(1, 2)
        hidden = self._transformer(hidden).permute(0, 2, 1)
        for blocks in decoder.upsample:
            for block in blocks:
                hidden = self._module(block, hidden)
        for block in decoder.decoder:
            hidden = self._module(block, hidden)
        self.frames += codes.shape[-1]
        return hidden.clamp(min=-1, max=1).reshape(-1)

    def state_frames(self) -> int:
        """Frames of K/V held per transformer layer (at most `window - 1`, whatever was decoded)."""
        return 0 if self._kv[0] is None else int(self._kv[0][0].shape[2])

    # -- the transformer ------------------------------------------------------------------------------------------
    def _transformer(self, hidden: torch.Tensor) -> torch.Tensor:
        model = self.decoder.pre_transformer
        x = model.input_proj(hidden)
        length = x.shape[1]
        positions = torch.arange(self.frames, self.frames + length, device=x.device)
        cos, sin = model.rotary_emb(x, positions.unsqueeze(0))
        for index, layer in enumerate(model.layers):
            residual = x
            x = residual + layer.self_attn_layer_scale(
                self._attention(index, layer.self_attn, layer.input_layernorm(x), cos, sin)
            )
            residual = x
            x = residual + layer.mlp_layer_scale(layer.mlp(layer.post_attention_layernorm(x)))
        return model.output_proj(model.norm(x))

    def _attention(self, index: int, attn: Any, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, length, _ = h.shape
        shape = (batch, length, -1, attn.head_dim)
        q = attn.q_norm(attn.q_proj(h).view(shape)).transpose(1, 2)
        k = attn.k_norm(attn.k_proj(h).view(shape)).transpose(1, 2)
        v = attn.v_proj(h).view(shape).transpose(1, 2)
        q, k = self._codec.apply_rotary_pos_emb(q, k, cos, sin)
        past = self._kv[index]
        if past is not None:
            k = torch.cat((past[0], k), dim=2)
            v = torch.cat((past[1], v), dim=2)
        held = k.shape[2] - length
        query_pos = torch.arange(held, held + length, device=h.device).unsqueeze(1)
        key_pos = torch.arange(k.shape[2], device=h.device).unsqueeze(0)
        mask = (key_pos <= query_pos) & (key_pos > query_pos - self.window)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=attn.scaling, enable_gqa=attn.num_key_value_groups > 1
        )
        keep = self.window - 1
        self._kv[index] = (k[:, :, -keep:].clone(), v[:, :, -keep:].clone()) if keep > 0 else None
        return attn.o_proj(out.transpose(1, 2).reshape(batch, length, -1))

    # -- the convolutions -----------------------------------------------------------------------------------------
    def _module(self, module: Any, x: torch.Tensor) -> torch.Tensor:
        codec = self._codec
        if isinstance(module, codec.Qwen3TTSTokenizerV2CausalConvNet):
            return self._conv(module, x)
        if isinstance(module, codec.Qwen3TTSTokenizerV2CausalTransConvNet):
            return self._transposed(module, x)
        if isinstance(module, codec.SnakeBeta):
            return module(x)
        if isinstance(module, codec.Qwen3TTSTokenizerV2DecoderDecoderBlock):
            for block in module.block:
                x = self._module(block, x)
            return x
        if isinstance(module, codec.Qwen3TTSTokenizerV2DecoderDecoderResidualUnit):
            h = self._conv(module.conv1, module.act1(x))
            return self._conv(module.conv2, module.act2(h)) + x
        if isinstance(module, codec.Qwen3TTSTokenizerV2ConvNeXtBlock):
            h = self._conv(module.dwconv, x).permute(0, 2, 1)
            h = module.pwconv2(module.act(module.pwconv1(module.norm(h))))
            return x + (module.gamma * h).permute(0, 2, 1)
        raise ModelError(f"the codec decoder has a module the streaming decoder does not know: {type(module).__name__}")

    def _conv(self, module: Any, x: torch.Tensor) -> torch.Tensor:
        if module.stride != 1:
            raise ModelError(f"a strided causal convolution (stride {module.stride}) can't be decoded in pieces here")
        pad = module.padding
        if pad == 0:
            return module.conv(x)
        tail = self._tails.get(id(module))
        if tail is None:
            tail = x.new_zeros(x.shape[0], x.shape[1], pad)  # the whole decode's left padding
        x = torch.cat((tail, x), dim=-1)
        self._tails[id(module)] = x[..., -pad:].clone()
        return module.conv(x)

    def _transposed(self, module: Any, x: torch.Tensor) -> torch.Tensor:
        (kernel,), (stride,) = module.conv.kernel_size, module.conv.stride
        if kernel > 2 * stride or module.right_pad != kernel - stride:
            raise ModelError(f"a transposed convolution of kernel {kernel}, stride {stride} can't be decoded in pieces")
        previous = self._tails.get(id(module))
        if previous is None:
            previous = x.new_zeros(x.shape[0], x.shape[1], 1)  # contributes nothing but the bias, added once anyway
        self._tails[id(module)] = x[..., -1:].clone()
        out = module.conv(torch.cat((previous, x), dim=-1))
        return out[..., stride : stride * (1 + x.shape[-1])]
