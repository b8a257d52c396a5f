"""A tiny, randomly initialised Qwen2-VL built entirely offline.

Tests, the demo and our users' own test suites need a real vision-language model that the real
LLaMA-Factory can LoRA-train and the real lmms-eval can evaluate, without a download: every file a Hub
checkpoint of Qwen/Qwen2-VL-2B-Instruct has (config, safetensors weights, tokenizer, image and video
processor configs, ChatML chat template, generation config) is produced here at toy size (~0.2 M
parameters) in about a second, and bit-identically for a given seed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

#: Qwen2-VL's special tokens, in the order the tiny tokenizer assigns them ids 0..7.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

#: The chat template of Qwen/Qwen2-VL-2B-Instruct, so that LLaMA-Factory's qwen2_vl template and
#: lmms-eval's qwen2_vl wrapper see exactly the prompt format of the real model.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Words the BPE is trained on: the synthetic domains' questions and answers plus common English, so
# that prompts and answers tokenize into few tokens (short sequences keep CPU training fast).
_CORPUS_WORDS = (
    "You are a helpful assistant. system user assistant "
    "What colour color is the shape? How many shapes are there? Which shape is this? "
    "What digit is shown? Answer with one word. Answer the question using a single word or phrase. "
    "red green blue yellow orange purple black white pink brown gray grey "
    "circle square triangle diamond star cross ellipse rectangle pentagon hexagon "
    "zero one two three four five six seven eight nine ten 0 1 2 3 4 5 6 7 8 9 10 "
    "yes no the a an of in on at to is are what which how many image picture photo text "
    "chart number count colour shape digit letter word answer question please describe "
)


@dataclass(frozen=True)
class TinyVLMSpec:
    """Sizes of the tiny model; the defaults give about 0.2 M parameters and 4 tokens per 56x56 image."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    vision_depth: int = 1
    vision_embed_dim: int = 32
    vision_num_heads: int = 2
    bpe_vocab_size: int = 512
    #: Larger than Qwen's 0.02: at width 64 a 0.02 output head caps every logit near 1, so a
    #: LoRA on the frozen head's inputs could never become confident and the domains unlearnable.
    initializer_range: float = 0.2
    min_pixels: int = 56 * 56
    max_pixels: int = 112 * 112
    mrope_section: tuple[int, int, int] = field(default=(2, 3, 3))


@dataclass(frozen=True)
class TinyVLM:
    """What :func:`build_tiny_vlm` wrote: the directory and the facts tests need about it."""

    path: Path
    seed: int
    num_parameters: int
    token_ids: dict[str, int]


def build_tokenizer(vocab_size: int = 512):
    """A byte-level BPE with Qwen2-VL's special tokens and ChatML template, trained in-process.

    Byte-level, as Qwen's own tokenizer, so any text (including text not in the training corpus)
    round-trips exactly; the corpus only decides which words get single tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS_WORDS] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )


def _config(spec: TinyVLMSpec, vocab_size: int, ids: dict[str, int]):
    from transformers import Qwen2VLConfig

    return Qwen2VLConfig(
        text_config=dict(
            hidden_size=spec.hidden_size,
            intermediate_size=spec.intermediate_size,
            num_hidden_layers=spec.num_hidden_layers,
            num_attention_heads=spec.num_attention_heads,
            num_key_value_heads=spec.num_key_value_heads,
            max_position_embeddings=4096,
            rope_scaling={"type": "mrope", "mrope_section": list(spec.mrope_section)},
            vocab_size=vocab_size,
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
            initializer_range=spec.initializer_range,
        ),
        vision_config=dict(
            depth=spec.vision_depth,
            embed_dim=spec.vision_embed_dim,
            hidden_size=spec.hidden_size,
            num_heads=spec.vision_num_heads,
            mlp_ratio=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
        initializer_range=spec.initializer_range,
    )


def _processor(tokenizer, spec: TinyVLMSpec):
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    image_processor = Qwen2VLImageProcessor(min_pixels=spec.min_pixels, max_pixels=spec.max_pixels)
    # transformers 5's Qwen2VLProcessor refuses to build without a video processor, even for images.
    return Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
    )


def build_tiny_vlm(out_dir: str | Path, seed: int = 0, spec: TinyVLMSpec | None = None) -> TinyVLM:
    """Write a tiny Qwen2-VL checkpoint to ``out_dir``, loadable by transformers' Auto classes.

    The directory is written in a sibling temporary folder and renamed into place, so an interrupted
    build leaves no half-written model behind. The same seed gives byte-identical weights.
    """
    import tempfile

    import torch
    from transformers import GenerationConfig, Qwen2VLForConditionalGeneration

    spec = spec or TinyVLMSpec()
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new directory")
    out.parent.mkdir(parents=True, exist_ok=True)

    tokenizer = build_tokenizer(spec.bpe_vocab_size)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = _config(spec, len(tokenizer), ids)
    # Seeding around the constructor alone makes the weights depend on the seed and nothing else.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2VLForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        do_sample=False,
    )
    n_params = sum(p.numel() for p in model.parameters())

    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.tmp-") as tmp:
        staging = Path(tmp) / "model"
        model.save_pretrained(staging, safe_serialization=True)
        _processor(tokenizer, spec).save_pretrained(staging)
        (staging / "tiny_vlm.json").write_text(
            json.dumps({"seed": seed, "spec": asdict(spec)}, indent=2) + "\n", encoding="utf-8"
        )
        if out.exists():
            out.rmdir()
        staging.rename(out)
    logger.info("tiny Qwen2-VL (%d parameters, seed %d) written to %s", n_params, seed, out)
    return TinyVLM(path=out, seed=seed, num_parameters=n_params, token_ids=ids)
