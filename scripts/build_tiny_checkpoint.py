#!/usr/bin/env python3
"""Build tiny, randomly initialised Qwen3-TTS checkpoints offline, from qwen_tts's own classes.

Every variant is written under its real directory name (`Qwen3-TTS-12Hz-1.7B-CustomVoice`, ...) in the given
model dir, with a real `speech_tokenizer/` and text tokenizer, so the worker's loader and all of qwen_tts's
generation code run unchanged. The audio is noise; the shapes, rates and code paths are real: 12.5 frames/s,
1920 samples per frame at 24 kHz, 16 codebooks of 2048.

EOS is "dead" by default: the talker's EOS logit is pinned at 0 while every other logit is large, so top-k
sampling never picks it and a generation yields exactly `max_new_tokens` frames (exact sample counts in
tests). `--live-eos` makes EOS a frequent pick instead, for tests that need random lengths.

    python scripts/build_tiny_checkpoint.py --model-dir models/tiny [--seed 0] [--live-eos]

`--real-shapes` builds the released models' structure instead (`shared/notes/real-shapes.md`): talker and code
predictor at their real widths (16 heads x 128 whatever the hidden size, so q is wider than hidden on the 0.6B
and in every code predictor), the 0.6B's Identity talker-to-predictor projection, rope_theta 1e6 with the
interleaved mrope sections [24, 20, 20], and the real 12 Hz decoder (8 layers, sliding window 72). The talker's
head keeps its plain init (no x50 spread: near-ties stay as close as a real model's); EOS dead is then its row
zeroed (a 0 logit never tops ~2,000 others nor enters their top 50). `--layers N` cuts the talker's and the
code predictor's depth for CPU tests (default: full depth, what a GPU check uses); `--vocoder-dim` narrows the
decoder's convolution stack (same kernels, strides and dilations) to keep CPU decoding cheap. What stays
small: the text vocabulary (the tiny BPE), the speaker encoder's channels and the codec's encoder.

    python scripts/build_tiny_checkpoint.py --model-dir models/real --real-shapes [--layers 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audio.catalog import CUSTOM_VOICE, MODELS, SPEAKERS, ModelVariant  # noqa: E402

BUILD_VERSION = 1  # bump when the layout below changes, so cached builds are rebuilt

# Text vocabulary: 256 byte tokens, a few merges, then the special tokens the model addresses by id.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|tts_pad|>", "<|tts_bos|>", "<|tts_eos|>"]
TEXT_VOCAB_SIZE = 512

CODEC_VOCAB_SIZE = 3072  # as in the real talker: 2048 codes, then control, language and speaker ids
CODEBOOK_SIZE = 2048
NUM_CODE_GROUPS = 16
CODEC_IDS = {
    "codec_pad_id": 2148,
    "codec_bos_id": 2149,
    "codec_eos_token_id": 2150,
    "codec_think_id": 2154,
    "codec_nothink_id": 2155,
    "codec_think_bos_id": 2156,
    "codec_think_eos_id": 2157,
}
LANGUAGE_IDS = {
    "chinese": 2055,
    "english": 2050,
    "german": 2053,
    "italian": 2070,
    "portuguese": 2071,
    "spanish": 2054,
    "japanese": 2058,
    "korean": 2064,
    "french": 2061,
    "russian": 2069,
    "beijing_dialect": 2074,
    "sichuan_dialect": 2062,
}
DIALECTS = {"dylan": "beijing_dialect", "eric": "sichuan_dialect"}

HIDDEN = 32  # talker hidden size; the speaker encoder's output must match it


@dataclass(frozen=True)
class Shapes:
    """The widths and depths a build uses. `TINY` is the CPU-cheap default; `real_shapes` the released models'."""

    talker_hidden: int = HIDDEN
    talker_intermediate: int = 64
    talker_layers: int = 2
    talker_heads: int = 2
    talker_kv_heads: int = 1
    talker_head_dim: int = 16
    mrope_section: tuple[int, ...] = (4, 2, 2)
    rope_theta: float = 10000.0  # tiny builds leave it out of config.json (qwen_tts's default is 10000)
    text_hidden: int = 32
    predictor_hidden: int = 16
    predictor_intermediate: int = 32
    predictor_layers: int = 1
    predictor_heads: int = 2
    predictor_kv_heads: int = 1
    predictor_head_dim: int = 8
    head_spread: float = 50.0  # the talker head's scale (1: plain init)
    real: bool = False


TINY = Shapes()
REAL_TALKER = {"1.7B": (2048, 6144), "0.6B": (1024, 3072)}  # hidden, intermediate
REAL_DEPTH = {"talker": 28, "predictor": 5}
REAL_VOCODER_DIM = 1536


def real_shapes(size: str, layers: int | None = None) -> Shapes:
    """The released `size` ("1.7B" / "0.6B"), with the talker's and code predictor's depth cut to `layers`."""
    hidden, intermediate = REAL_TALKER[size]
    return Shapes(
        talker_hidden=hidden,
        talker_intermediate=intermediate,
        talker_layers=layers or REAL_DEPTH["talker"],
        talker_heads=16,
        talker_kv_heads=8,
        talker_head_dim=128,
        mrope_section=(24, 20, 20),
        rope_theta=1e6,
        text_hidden=2048,
        predictor_hidden=1024,
        predictor_intermediate=3072,
        predictor_layers=min(layers or REAL_DEPTH["predictor"], REAL_DEPTH["predictor"]),
        predictor_heads=16,
        predictor_kv_heads=8,
        predictor_head_dim=128,
        head_spread=1.0,
        real=True,
    )


GENERATION_CONFIG = {
    "do_sample": True,
    "repetition_penalty": 1.05,
    "temperature": 0.9,
    "top_p": 1.0,
    "top_k": 50,
    "subtalker_dosample": True,
    "subtalker_temperature": 0.9,
    "subtalker_top_p": 1.0,
    "subtalker_top_k": 50,
    "max_new_tokens": 8192,
}


def _text_tokenizer():
    """A byte-level BPE with Qwen2's pre-tokenizer whose merges make `assistant` one token.

    qwen_tts slices prompts by position (`<|im_start|>assistant\\n` = 3 tokens), so that must hold here.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    qwen2_split = (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
        r"|\s*[\r\n]+|\s+(?!\S)|\s+"
    )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(qwen2_split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TEXT_VOCAB_SIZE - len(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = ["assistant user system"] * 50 + ["Hello world. The quick brown fox jumps over the lazy dog."] * 5
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.add_special_tokens(SPECIAL_TOKENS)
    return Qwen2TokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        clean_up_tokenization_spaces=False,
    )


def _variant_config(variant: ModelVariant, special_ids: dict[str, int], shapes: Shapes = TINY) -> dict:
    talker = {
        "vocab_size": CODEC_VOCAB_SIZE,
        "hidden_size": shapes.talker_hidden,
        "intermediate_size": shapes.talker_intermediate,
        "num_hidden_layers": shapes.talker_layers,
        "num_attention_heads": shapes.talker_heads,
        "num_key_value_heads": shapes.talker_kv_heads,
        "head_dim": shapes.talker_head_dim,
        "max_position_embeddings": 32768,
        "rope_scaling": {"rope_type": "default", "mrope_section": list(shapes.mrope_section), "interleaved": True},
        "num_code_groups": NUM_CODE_GROUPS,
        "text_hidden_size": shapes.text_hidden,
        "text_vocab_size": TEXT_VOCAB_SIZE,
        "code_predictor_config": {
            "vocab_size": CODEBOOK_SIZE,
            "hidden_size": shapes.predictor_hidden,
            "intermediate_size": shapes.predictor_intermediate,
            "num_hidden_layers": shapes.predictor_layers,
            "num_attention_heads": shapes.predictor_heads,
            "num_key_value_heads": shapes.predictor_kv_heads,
            "head_dim": shapes.predictor_head_dim,
            "num_code_groups": NUM_CODE_GROUPS,
            "max_position_embeddings": 65536,
        },
        "codec_language_id": LANGUAGE_IDS,
        **CODEC_IDS,
    }
    if shapes.real:
        talker["rope_theta"] = talker["code_predictor_config"]["rope_theta"] = shapes.rope_theta
    if variant.kind == CUSTOM_VOICE:
        talker["spk_id"] = {key: 3000 + i for i, key in enumerate(SPEAKERS)}
        talker["spk_is_dialect"] = {key: DIALECTS.get(key, False) for key in SPEAKERS}
    else:
        talker["spk_id"] = {}
        talker["spk_is_dialect"] = {}
    return {
        "architectures": ["Qwen3TTSForConditionalGeneration"],
        "model_type": "qwen3_tts",
        "tokenizer_type": "qwen3_tts_tokenizer_12hz",
        "tts_model_size": "1b7" if variant.size == "1.7B" else "0b6",
        "tts_model_type": variant.kind,
        "talker_config": talker,
        "speaker_encoder_config": {
            "mel_dim": 128,  # qwen_tts computes 128 mel bins itself
            "enc_dim": shapes.talker_hidden,  # the x-vector is added to the talker's input
            "enc_channels": [16, 16, 16, 16, 48],
            "enc_kernel_sizes": [5, 3, 3, 3, 1],
            "enc_dilations": [1, 2, 3, 4, 1],
            "enc_attention_channels": 8,
            "enc_res2net_scale": 2,
            "enc_se_channels": 8,
            "sample_rate": 24000,
        },
        "im_start_token_id": special_ids["<|im_start|>"],
        "im_end_token_id": special_ids["<|im_end|>"],
        "tts_pad_token_id": special_ids["<|tts_pad|>"],
        "tts_bos_token_id": special_ids["<|tts_bos|>"],
        "tts_eos_token_id": special_ids["<|tts_eos|>"],
    }


def _speech_tokenizer_config(real: bool = False, vocoder_dim: int = REAL_VOCODER_DIM) -> dict:
    config = {
        "model_type": "qwen3_tts_tokenizer_12hz",
        "architectures": ["Qwen3TTSTokenizerV2Model"],
        "encoder_valid_num_quantizers": NUM_CODE_GROUPS,
        "input_sample_rate": 24000,
        "output_sample_rate": 24000,
        "decode_upsample_rate": 1920,
        "encode_downsample_rate": 1920,
        "encoder_config": {
            "sampling_rate": 24000,
            "frame_rate": 12.5,
            "audio_channels": 1,
            "hidden_size": 16,
            "num_filters": 4,
            "num_residual_layers": 1,
            "upsampling_ratios": [8, 6, 5, 4],
            "kernel_size": 7,
            "last_kernel_size": 3,
            "residual_kernel_size": 3,
            "dilation_growth_rate": 2,
            "compress": 2,
            "trim_right_ratio": 1.0,
            "codebook_size": CODEBOOK_SIZE,
            "codebook_dim": 16,
            "num_quantizers": NUM_CODE_GROUPS,
            "num_semantic_quantizers": 1,
            "vector_quantization_hidden_dimension": 16,
            "upsample_groups": 16,
            "num_hidden_layers": 1,
            "intermediate_size": 32,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "head_dim": 8,
            "max_position_embeddings": 8000,
            "sliding_window": 250,
            "use_causal_conv": True,
            "use_streaming": False,
        },
        "decoder_config": {
            "codebook_size": CODEBOOK_SIZE,
            "codebook_dim": 16,
            "hidden_size": 16,
            "latent_dim": 16,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "head_dim": 8,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_quantizers": NUM_CODE_GROUPS,
            "sliding_window": 72,
            "upsample_rates": [8, 5, 4, 3],
            "upsampling_ratios": [2, 2],
            "decoder_dim": 32,
            "max_position_embeddings": 8000,
        },
    }
    if real:  # the released 12 Hz decoder; the encoder (reference audio to codes) stays tiny
        config["decoder_config"].update(
            codebook_dim=512,
            hidden_size=512,
            latent_dim=1024,
            num_attention_heads=16,
            num_key_value_heads=16,
            head_dim=64,
            intermediate_size=1024,
            num_hidden_layers=8,
            rope_theta=10000,
            decoder_dim=vocoder_dim,
        )
    return config


def _shape_talker_head(model, live_eos: bool, spread: float = 50.0) -> None:
    """Make EOS dead (never in the top-k) or live (often the arg-max), see the module docstring."""
    import torch

    eos = CODEC_IDS["codec_eos_token_id"]
    with torch.no_grad():
        head = model.talker.codec_head.weight
        head.mul_(spread)  # spread the logits (tiny builds): the 50 best are far above 0
        if live_eos:
            head[eos] = head[eos] * 1.8
        else:
            head[eos].zero_()


def build_speech_tokenizer(dest: Path, seed: int, real: bool = False, vocoder_dim: int = REAL_VOCODER_DIM) -> None:
    import torch
    from qwen_tts.core.tokenizer_12hz.configuration_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Config
    from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Model
    from transformers import EncodecFeatureExtractor

    torch.manual_seed(seed)
    config = Qwen3TTSTokenizerV2Config(**_speech_tokenizer_config(real, vocoder_dim))
    model = Qwen3TTSTokenizerV2Model(config).eval()
    with torch.no_grad():
        # Codebooks start as zeros (they are learned running sums): every code would decode to silence.
        for name, param in model.named_parameters():
            if name.endswith(("embedding_sum", "embed_sum")):
                param.normal_(0.0, 1.0)
        # The default 0.02-std init shrinks the signal ~10x per upsampling block: rescale the vocoder's
        # convolutions to keep unit variance, then set the last one so the noise sits near -20 dBFS.
        for module in model.decoder.modules():
            if isinstance(module, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
                fan_in = module.weight[0].numel() if isinstance(module, torch.nn.Conv1d) else module.weight.shape[0]
                module.weight.normal_(0.0, fan_in**-0.5)
        last = model.decoder.decoder[-1].conv
        codes = torch.randint(0, CODEBOOK_SIZE, (1, NUM_CODE_GROUPS, 8), generator=torch.Generator().manual_seed(seed))
        for _ in range(4):  # the output is clamped to [-1, 1], so converge rather than scale once
            rms = float(model.decoder(codes).pow(2).mean().sqrt())
            last.weight.mul_(0.1 / max(rms, 1e-6))
    model.save_pretrained(dest)
    EncodecFeatureExtractor(feature_size=1, sampling_rate=24000, padding_value=0.0).save_pretrained(dest)


def build_variant(
    variant: ModelVariant,
    dest: Path,
    speech_tokenizer: Path,
    seed: int,
    live_eos: bool,
    shapes: Shapes = TINY,
    device: str = "cpu",
) -> None:
    import torch
    from qwen_tts.core.models import Qwen3TTSConfig, Qwen3TTSForConditionalGeneration, Qwen3TTSProcessor

    tokenizer = _text_tokenizer()
    special_ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    torch.manual_seed(seed)
    config_dict = _variant_config(variant, special_ids, shapes)
    # On a GPU the random init of a full-size model takes seconds instead of minutes (other numbers, same shapes).
    with torch.device(device):
        model = Qwen3TTSForConditionalGeneration(Qwen3TTSConfig(**config_dict)).eval()
        _shape_talker_head(model, live_eos, shapes.head_spread)
    model.to("cpu").save_pretrained(dest)
    # save_pretrained serialises sub-configs with keys (model_type, ...) their classes don't accept back;
    # the published checkpoints carry the plain dict, so write that.
    (dest / "config.json").write_text(json.dumps(config_dict, indent=2))
    Qwen3TTSProcessor(tokenizer=tokenizer).save_pretrained(dest)
    (dest / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2))
    shutil.copytree(speech_tokenizer, dest / "speech_tokenizer", dirs_exist_ok=True)


def build(
    model_dir: Path,
    *,
    seed: int = 0,
    live_eos: bool = False,
    names: list[str] | None = None,
    real: bool = False,
    layers: int | None = None,
    vocoder_dim: int = REAL_VOCODER_DIM,
    device: str = "cpu",
) -> Path:
    """Build the variants into `model_dir` (tiny, or `real` shapes with `layers` of depth), initialised on `device`;
    a build with the same stamp already there is reused."""
    model_dir = Path(model_dir)
    stamp = {"version": BUILD_VERSION, "seed": seed, "live_eos": live_eos, "models": sorted(names or MODELS)}
    if real:
        stamp["real_shapes"] = {"layers": layers, "vocoder_dim": vocoder_dim}
    if device != "cpu":
        stamp["device"] = device
    stamp_file = model_dir / "tiny-checkpoint.json"
    if stamp_file.exists() and json.loads(stamp_file.read_text()) == stamp:
        return model_dir
    model_dir.mkdir(parents=True, exist_ok=True)
    speech_tokenizer = model_dir / ".speech_tokenizer_build"
    build_speech_tokenizer(speech_tokenizer, seed, real, vocoder_dim)
    for name in stamp["models"]:
        variant = MODELS[name]
        dest = model_dir / variant.dir_name
        if dest.exists():
            shutil.rmtree(dest)
        # Each variant gets its own seed offset so two kinds are not the same network.
        shapes = real_shapes(variant.size, layers) if real else TINY
        build_variant(variant, dest, speech_tokenizer, seed + list(MODELS).index(name), live_eos, shapes, device)
    shutil.rmtree(speech_tokenizer)
    stamp_file.write_text(json.dumps(stamp))
    return model_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="where the variant directories go")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--live-eos", action="store_true", help="let generations stop at random lengths")
    parser.add_argument("--models", nargs="*", choices=sorted(MODELS), help="default: all five")
    parser.add_argument("--real-shapes", action="store_true", help="the released models' structure (random weights)")
    parser.add_argument("--layers", type=int, help="with --real-shapes: talker / code predictor depth (default: full)")
    parser.add_argument(
        "--vocoder-dim", type=int, default=REAL_VOCODER_DIM, help="with --real-shapes: the decoder's conv width"
    )
    parser.add_argument("--device", default="cpu", help="where the weights are initialised (cuda: fast, other numbers)")
    args = parser.parse_args(argv)
    if (args.layers is not None or args.vocoder_dim != REAL_VOCODER_DIM) and not args.real_shapes:
        parser.error("--layers and --vocoder-dim go with --real-shapes")
    out = build(
        args.model_dir,
        seed=args.seed,
        live_eos=args.live_eos,
        names=args.models,
        real=args.real_shapes,
        layers=args.layers,
        vocoder_dim=args.vocoder_dim,
        device=args.device,
    )
    print(f"{'real-shape' if args.real_shapes else 'tiny'} checkpoints ready in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
