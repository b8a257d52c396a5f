"""Tiny, randomly initialised vision-language models built entirely offline.

Tests, the demo and our users' own test suites need a real vision-language model that the real
LLaMA-Factory can LoRA-train and the real lmms-eval can evaluate, without a download: every file a Hub
checkpoint has (config, safetensors weights, tokenizer, image and video processor configs, chat
template, generation config) is produced here at toy size (~0.2 M parameters) in about a second, and
bit-identically for a given seed. One builder per family our users fine-tune (``TinyVLMSpec.family``):

- ``qwen2_vl``: Qwen2-VL as Qwen/Qwen2-VL-2B-Instruct ships it (the default);
- ``qwen2_5_vl``: Qwen2.5-VL (windowed vision attention, SwiGLU vision MLP);
- ``internvl``: InternVL3.5 in transformers' own format, as OpenGVLab/InternVL3_5-2B-HF ships it
  (a Qwen3 language model with tied embeddings as in the 2B, tiles of 56 pixels, bf16 weights by default as the
  real checkpoints; lmms-eval's ``internvl_hf`` loads in bf16 whatever the checkpoint holds).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

#: The families :func:`build_tiny_vlm` builds.
FAMILIES: tuple[str, ...] = ("qwen2_vl", "qwen2_5_vl", "internvl")

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

#: InternVL3.5's special tokens (its language model is Qwen3's, plus image tile delimiters), and the
#: tokenizer attributes transformers' InternVLProcessor reads them from.
INTERNVL_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>",
)
INTERNVL_TOKEN_ATTRIBUTES: dict[str, str] = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}

#: The chat template of OpenGVLab's InternVL3.5 -HF checkpoints (transformers'
#: convert_internvl_weights_to_hf.py): ChatML, no default system turn, one ``<IMG_CONTEXT>`` line
#: per image, which the processor expands to a tile's tokens.
INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{'<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)

#: LLaMA-Factory's intern_vl template trains with this default system prompt; the BPE learns it so
#: that it costs a few tokens, not ~150 bytes, per training example.
INTERNVL_DEFAULT_SYSTEM = (
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
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
    #: One of :data:`FAMILIES`.
    family: str = "qwen2_vl"
    #: The weights' dtype on disk; None: the family's (float32 for Qwen, bfloat16 for InternVL).
    dtype: str | None = None

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown tiny VLM family {self.family!r}; choose one of {', '.join(FAMILIES)}")
        if self.dtype not in (None, "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype {self.dtype!r}: choose float32, bfloat16 or float16")

    @property
    def weights_dtype(self) -> str:
        return self.dtype or ("bfloat16" if self.family == "internvl" else "float32")


@dataclass(frozen=True)
class TinyVLM:
    """What :func:`build_tiny_vlm` wrote: the directory and the facts tests need about it."""

    path: Path
    seed: int
    num_parameters: int
    token_ids: dict[str, int]
    family: str = "qwen2_vl"


def special_tokens(family: str = "qwen2_vl") -> tuple[str, ...]:
    return INTERNVL_SPECIAL_TOKENS if family == "internvl" else SPECIAL_TOKENS


def build_tokenizer(vocab_size: int = 512, family: str = "qwen2_vl"):
    """A byte-level BPE with the family's special tokens and chat template, trained in-process.

    Byte-level, as Qwen's own tokenizer (which InternVL3.5 uses too), so any text (including text
    not in the training corpus) round-trips exactly; the corpus only decides which words get single
    tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokens = special_tokens(family)
    corpus = _CORPUS_WORDS + (INTERNVL_DEFAULT_SYSTEM if family == "internvl" else "")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([corpus] * 4, trainer=trainer)
    if family == "internvl":
        extra: dict = {"extra_special_tokens": dict(INTERNVL_TOKEN_ATTRIBUTES)}
        template = INTERNVL_CHAT_TEMPLATE
    else:
        extra = {"additional_special_tokens": list(tokens[1:])}
        template = CHAT_TEMPLATE
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        chat_template=template,
        model_max_length=4096,
        padding_side="left",
        clean_up_tokenization_spaces=False,
        **extra,
    )


def _text_config(spec: TinyVLMSpec, vocab_size: int, ids: dict[str, int]) -> dict:
    return dict(
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=4096,
        vocab_size=vocab_size,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        initializer_range=spec.initializer_range,
    )


#: Qwen-VL vision patching: 14 px patches, 2 frames per temporal patch, 2x2 patches merged per token.
_QWEN_PATCHES = {"patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}


def _qwen_vision_ids(ids: dict[str, int]) -> dict[str, int]:
    return dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )


def _config(spec: TinyVLMSpec, vocab_size: int, ids: dict[str, int]):
    """The family's transformers config at the spec's sizes."""
    text = _text_config(spec, vocab_size, ids)
    if spec.family == "internvl":
        from transformers import InternVLConfig

        return InternVLConfig(
            # InternVL3.5: a Qwen3 language model (per-head q/k norms); the 2B ties its embeddings (the 8B does not).
            text_config=dict(
                text, model_type="qwen3", head_dim=spec.hidden_size // spec.num_attention_heads,
                tie_word_embeddings=True,
            ),
            vision_config=dict(
                hidden_size=spec.vision_embed_dim,
                intermediate_size=2 * spec.vision_embed_dim,
                num_hidden_layers=spec.vision_depth,
                num_attention_heads=spec.vision_num_heads,
                image_size=[_INTERNVL_TILE, _INTERNVL_TILE],
                patch_size=[14, 14],
                initializer_range=spec.initializer_range,
            ),
            image_token_id=ids["<IMG_CONTEXT>"],
            image_seq_length=_internvl_tokens_per_tile(),
            downsample_ratio=0.5,
            tie_word_embeddings=True,
        )
    text["rope_scaling"] = {"type": "mrope", "mrope_section": list(spec.mrope_section)}
    if spec.family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig

        return Qwen2_5_VLConfig(
            text_config=text,
            vision_config=dict(
                depth=max(2, spec.vision_depth),  # one windowed block and one full-attention block
                hidden_size=spec.vision_embed_dim,
                intermediate_size=2 * spec.vision_embed_dim,
                num_heads=spec.vision_num_heads,
                out_hidden_size=spec.hidden_size,
                **_QWEN_PATCHES,
                window_size=56,
                fullatt_block_indexes=[max(2, spec.vision_depth) - 1],
                initializer_range=spec.initializer_range,
            ),
            **_qwen_vision_ids(ids),
            tie_word_embeddings=False,
            initializer_range=spec.initializer_range,
        )
    from transformers import Qwen2VLConfig

    return Qwen2VLConfig(
        text_config=text,
        vision_config=dict(
            depth=spec.vision_depth,
            embed_dim=spec.vision_embed_dim,
            hidden_size=spec.hidden_size,
            num_heads=spec.vision_num_heads,
            mlp_ratio=2,
            **_QWEN_PATCHES,
        ),
        **_qwen_vision_ids(ids),
        tie_word_embeddings=False,
        initializer_range=spec.initializer_range,
    )


#: InternVL's tile side in pixels: one 56x56 image of the synthetic domains is one tile.
_INTERNVL_TILE = 56


def _internvl_tokens_per_tile() -> int:
    """(tile / patch)^2 patches, pixel-shuffled 2x2 (downsample_ratio 0.5)."""
    return (_INTERNVL_TILE // 14) ** 2 // 4


def _processor(tokenizer, spec: TinyVLMSpec):
    if spec.family == "internvl":
        from transformers import GotOcr2ImageProcessor, InternVLProcessor, InternVLVideoProcessor

        size = {"height": _INTERNVL_TILE, "width": _INTERNVL_TILE}
        return InternVLProcessor(
            image_processor=GotOcr2ImageProcessor(size=size, crop_to_patches=True, max_patches=12),
            tokenizer=tokenizer,
            video_processor=InternVLVideoProcessor(size=size),
            image_seq_length=_internvl_tokens_per_tile(),
            chat_template=INTERNVL_CHAT_TEMPLATE,
        )
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    if spec.family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLProcessor as processor_class
    else:
        from transformers import Qwen2VLProcessor as processor_class
    image_processor = Qwen2VLImageProcessor(min_pixels=spec.min_pixels, max_pixels=spec.max_pixels)
    # transformers 5's Qwen2VLProcessor refuses to build without a video processor, even for images.
    return processor_class(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
    )


def model_class(family: str = "qwen2_vl"):
    """The transformers class of a family's tiny model."""
    import transformers

    return getattr(transformers, {
        "qwen2_vl": "Qwen2VLForConditionalGeneration",
        "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
        "internvl": "InternVLForConditionalGeneration",
    }[family])


def build_tiny_vlm(out_dir: str | Path, seed: int = 0, spec: TinyVLMSpec | None = None) -> TinyVLM:
    """Write a tiny checkpoint of ``spec.family`` to ``out_dir``, loadable by transformers' Auto classes.

    The directory is written in a sibling temporary folder and renamed into place, so an interrupted
    build leaves no half-written model behind. The same seed gives byte-identical weights.
    """
    import tempfile

    import torch
    from transformers import GenerationConfig

    spec = spec or TinyVLMSpec()
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new directory")
    out.parent.mkdir(parents=True, exist_ok=True)

    tokenizer = build_tokenizer(spec.bpe_vocab_size, spec.family)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in special_tokens(spec.family)}
    config = _config(spec, len(tokenizer), ids)
    # Seeding around the constructor alone makes the weights depend on the seed and nothing else.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(spec.family)(config).eval()
    model.to(getattr(torch, spec.weights_dtype))
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
    logger.info("tiny %s (%d parameters, seed %d) written to %s", spec.family, n_params, seed, out)
    return TinyVLM(path=out, seed=seed, num_parameters=n_params, token_ids=ids, family=spec.family)
