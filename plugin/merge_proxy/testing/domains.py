"""Tiny synthetic visual QA domains for tests and the offline demo.

Each domain asks one fixed question about a 56x56 RGB image whose answer is one short lowercase word:

========  ==============================  =====================================================
domain    question                        answers
========  ==============================  =====================================================
color     What colour is the shape?       red, green, blue, yellow, purple, orange
count     How many shapes are there?      1, 2, 3, 4
shape     What shape is this?             circle, square, triangle, diamond, cross
digit     What digit is shown?            0 ... 9 (PIL's built-in bitmap font, scaled up)
========  ==============================  =====================================================

Everything the question does not ask about (position, size, colour, shape kind) is drawn at random,
so each domain needs its own skill. A sample is described by a :class:`Scene` (the items drawn),
and its canonical text :attr:`Sample.key` decides its split: a fixed hash of ``(domain, key)``
reserves about a quarter of every domain's scene space for ``eval`` and the rest for ``train``.
Train and eval are therefore disjoint for any seeds and sizes, and no scene repeats within a split.

Generation is deterministic: the random stream is seeded from ``(seed, domain, split)`` through
SHA-256 (not Python's salted ``hash``), images are drawn with integer coordinates and no
anti-aliasing, and PNG encoding is deterministic for a given Pillow build.

:func:`write_domains` writes the samples as LLaMA-Factory sharegpt datasets and as lmms-eval tasks
(see its docstring for the layout).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from merge_proxy.errors import ConfigError

logger = logging.getLogger(__name__)

IMAGE_SIZE = 56
"""Side of every image in pixels (a multiple of Qwen2-VL's 28-pixel merged patch: 4 image tokens)."""

SPLITS = ("train", "eval")
EVAL_SHARE = 4
"""One scene in ``EVAL_SHARE`` (by hash) belongs to the eval split, the others to train."""

IMAGE_PLACEHOLDER = "<image>"
"""LLaMA-Factory's image placeholder, put before the question in the user turn."""

GROUP_TASK = "synth_all"
"""Name of the lmms-eval group that runs every written domain."""

MANIFEST = "domains.json"
"""File in ``out_dir`` that records what :func:`write_domains` wrote."""

BACKGROUND = (255, 255, 255)

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 60, 220),
    "yellow": (235, 200, 0),
    "purple": (140, 40, 180),
    "orange": (250, 130, 0),
    "black": (20, 20, 20),
}
"""Fill colours by name; the first six are the answers of the ``color`` domain."""

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
_DIGIT_COLORS = ("black", "red", "green", "blue", "purple")
_MAX_TRIES = 2000


# --------------------------------------------------------------------------------------------------
# records


@dataclass(frozen=True)
class Item:
    """One thing drawn on the canvas.

    ``kind`` is a shape name (see :data:`SHAPES`) or ``digit-N``; ``(cx, cy)`` is the centre in
    pixels; ``size`` is the side of the bounding box for shapes and the glyph height for digits
    (a multiple of 7, the height of the bitmap font's digits).
    """

    kind: str
    color: str
    cx: int
    cy: int
    size: int

    def key(self) -> str:
        return f"{self.kind}:{self.color}:{self.cx}:{self.cy}:{self.size}"


@dataclass(frozen=True)
class Scene:
    """A full image description: what :func:`render` draws, and what identifies a sample."""

    items: tuple[Item, ...]

    def key(self) -> str:
        """Canonical text of the scene (item order does not matter)."""
        return "|".join(sorted(item.key() for item in self.items))


@dataclass(frozen=True)
class Domain:
    """A visual QA domain: one question, a closed answer vocabulary and a scene sampler.

    ``sample_scene(rng, answer)`` draws a random scene whose correct answer is ``answer``.
    """

    name: str
    question: str
    answers: tuple[str, ...]
    sample_scene: Callable[[np.random.Generator, str], Scene]

    def render(self, scene: Scene) -> Image.Image:
        """Draw ``scene`` (same for every domain; a method for discoverability)."""
        return render(scene)


@dataclass(frozen=True)
class Sample:
    """One generated question/answer pair; ``png`` holds the image's PNG bytes."""

    uid: str
    domain: str
    split: str
    question: str
    answer: str
    key: str
    png: bytes = field(repr=False)

    @property
    def image(self) -> Image.Image:
        """The image, decoded from :attr:`png` (a fresh RGB PIL image on every access)."""
        with Image.open(io.BytesIO(self.png)) as im:
            return im.convert("RGB")


@dataclass(frozen=True)
class DomainsLayout:
    """What :func:`write_domains` wrote, and the names to use with each framework."""

    root: Path
    domains: tuple[str, ...]
    seed: int
    train_size: int
    eval_size: int
    llamafactory_dir: Path
    """LLaMA-Factory ``dataset_dir`` (holds dataset_info.json; also the default ``media_dir``)."""
    train_datasets: dict[str, str]
    """domain -> LLaMA-Factory dataset name of its train split (``synth_<domain>``)."""
    eval_datasets: dict[str, str]
    """domain -> LLaMA-Factory dataset name of its eval split (``synth_<domain>_eval``)."""
    lmms_eval_dir: Path
    """lmms-eval ``--include_path``."""
    tasks: dict[str, str]
    """domain -> lmms-eval task name (``synth_<domain>``)."""
    group: str
    """lmms-eval group running every written domain (``synth_all``)."""

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict; paths are relative to :attr:`root`."""
        return {
            "domains": list(self.domains),
            "seed": self.seed,
            "train_size": self.train_size,
            "eval_size": self.eval_size,
            "llamafactory_dir": self.llamafactory_dir.relative_to(self.root).as_posix(),
            "train_datasets": dict(self.train_datasets),
            "eval_datasets": dict(self.eval_datasets),
            "lmms_eval_dir": self.lmms_eval_dir.relative_to(self.root).as_posix(),
            "tasks": dict(self.tasks),
            "group": self.group,
        }


# --------------------------------------------------------------------------------------------------
# drawing


@cache
def _glyph(digit: str) -> Image.Image:
    """The ink of ``digit`` in PIL's built-in bitmap font, as an ``L`` mask cropped to its ink."""
    font = ImageFont.load_default_imagefont()
    left, top, right, bottom = font.getbbox(digit)
    canvas = Image.new("L", (right - left + 2, bottom - top + 2), 0)
    ImageDraw.Draw(canvas).text((1 - left, 1 - top), digit, font=font, fill=255)
    box = canvas.getbbox()
    if box is None:  # pragma: no cover - the shipped font has every digit
        raise RuntimeError(f"PIL's default bitmap font has no ink for {digit!r}")
    return canvas.crop(box)


_GLYPH_HEIGHT = 7  # height of the digits' ink in PIL's default bitmap font (checked in _digit_scale)


def _digit_scale(item: Item) -> int:
    glyph = _glyph(item.kind.removeprefix("digit-"))
    if glyph.height != _GLYPH_HEIGHT:  # pragma: no cover - guards against a different Pillow font
        raise RuntimeError(f"unexpected digit glyph height {glyph.height} in PIL's default font")
    return max(1, item.size // _GLYPH_HEIGHT)


def _box(item: Item) -> tuple[int, int, int, int]:
    left = item.cx - item.size // 2
    top = item.cy - item.size // 2
    return left, top, left + item.size - 1, top + item.size - 1


def _draw_item(image: Image.Image, draw: ImageDraw.ImageDraw, item: Item) -> None:
    fill = COLORS[item.color]
    if item.kind.startswith("digit-"):
        glyph = _glyph(item.kind.removeprefix("digit-"))
        scale = _digit_scale(item)
        mask = glyph.resize((glyph.width * scale, glyph.height * scale), Image.Resampling.NEAREST)
        left = item.cx - mask.width // 2
        top = item.cy - mask.height // 2
        image.paste(fill, (left, top, left + mask.width, top + mask.height), mask)
        return
    x0, y0, x1, y1 = _box(item)
    if item.kind == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif item.kind == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif item.kind == "triangle":
        draw.polygon([(item.cx, y0), (x1, y1), (x0, y1)], fill=fill)
    elif item.kind == "diamond":
        draw.polygon([(item.cx, y0), (x1, item.cy), (item.cx, y1), (x0, item.cy)], fill=fill)
    elif item.kind == "cross":
        arm = max(1, item.size // 3)
        a0 = item.cx - arm // 2
        b0 = item.cy - arm // 2
        draw.rectangle((a0, y0, a0 + arm - 1, y1), fill=fill)
        draw.rectangle((x0, b0, x1, b0 + arm - 1), fill=fill)
    else:
        raise ValueError(f"unknown item kind {item.kind!r}")


def render(scene: Scene) -> Image.Image:
    """Draw ``scene`` on a white :data:`IMAGE_SIZE`-square RGB canvas."""
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for item in scene.items:
        _draw_item(image, draw, item)
    return image


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------
# scene samplers


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _centre(rng: np.random.Generator, extent: int, margin: int = 1) -> int:
    """A centre coordinate keeping a box of side ``extent`` (placed as in :func:`_box`) on canvas."""
    low = extent // 2 + margin
    high = IMAGE_SIZE - 1 - margin - (extent - 1 - extent // 2)
    return int(rng.integers(low, high, endpoint=True))


def _single_shape(rng: np.random.Generator, kind: str, color: str, low: int, high: int) -> Scene:
    size = int(rng.integers(low, high, endpoint=True))
    return Scene((Item(kind, color, _centre(rng, size), _centre(rng, size), size),))


def _color_scene(rng: np.random.Generator, answer: str) -> Scene:
    return _single_shape(rng, _pick(rng, SHAPES), answer, 14, 30)


def _shape_scene(rng: np.random.Generator, answer: str) -> Scene:
    return _single_shape(rng, answer, _pick(rng, tuple(COLORS)), 18, 34)


_CELLS = 3
_CELL = IMAGE_SIZE // _CELLS  # 18 px; 3 * 18 = 54, so one spare pixel on each side


def _count_scene(rng: np.random.Generator, answer: str) -> Scene:
    """``answer`` identical small shapes, one per distinct cell of a 3x3 grid (so none overlap)."""
    count = int(answer)
    kind = _pick(rng, SHAPES)
    color = _pick(rng, tuple(COLORS))
    size = int(rng.integers(7, 11, endpoint=True))
    offset = (IMAGE_SIZE - _CELLS * _CELL) // 2
    jitter = (_CELL - size) // 2 - 1
    items = []
    for cell in rng.choice(_CELLS * _CELLS, size=count, replace=False):
        row, col = divmod(int(cell), _CELLS)
        cx = offset + col * _CELL + _CELL // 2 + int(rng.integers(-jitter, jitter, endpoint=True))
        cy = offset + row * _CELL + _CELL // 2 + int(rng.integers(-jitter, jitter, endpoint=True))
        items.append(Item(kind, color, cx, cy, size))
    return Scene(tuple(items))


def _digit_scene(rng: np.random.Generator, answer: str) -> Scene:
    scale = int(rng.integers(3, 5, endpoint=True))
    glyph = _glyph(answer)
    width, height = glyph.width * scale, glyph.height * scale
    # centre so that the pasted mask (left = cx - width // 2) stays on the canvas with a 1 px margin
    cx = int(rng.integers(width // 2 + 1, IMAGE_SIZE - 1 - (width - width // 2), endpoint=True))
    cy = int(rng.integers(height // 2 + 1, IMAGE_SIZE - 1 - (height - height // 2), endpoint=True))
    return Scene((Item(f"digit-{answer}", _pick(rng, _DIGIT_COLORS), cx, cy, _GLYPH_HEIGHT * scale),))


DOMAINS: dict[str, Domain] = {
    d.name: d
    for d in (
        Domain("color", "What colour is the shape?", tuple(COLORS)[:6], _color_scene),
        Domain("count", "How many shapes are there?", ("1", "2", "3", "4"), _count_scene),
        Domain("shape", "What shape is this?", SHAPES, _shape_scene),
        Domain("digit", "What digit is shown?", tuple("0123456789"), _digit_scene),
    )
}
"""The registry of synthetic domains, by name."""


# --------------------------------------------------------------------------------------------------
# generation


def _digest(*parts: object) -> bytes:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()


def split_of(domain: str, key: str) -> str:
    """The split a scene with canonical ``key`` belongs to in ``domain`` (independent of the seed)."""
    bucket = int.from_bytes(_digest("merge_proxy.domains.split", domain, key)[:8], "big") % EVAL_SHARE
    return "eval" if bucket == 0 else "train"


def _rng(domain: str, split: str, seed: int) -> np.random.Generator:
    entropy = int.from_bytes(_digest("merge_proxy.domains.rng", seed, domain, split)[:16], "big")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))


def get_domain(name: str) -> Domain:
    """The registered domain ``name``; a :class:`ConfigError` naming the known ones otherwise."""
    try:
        return DOMAINS[name]
    except KeyError:
        raise ConfigError(
            f"unknown synthetic domain {name!r}; choose from: {', '.join(DOMAINS)}"
        ) from None


def generate(domain: str, n: int, *, split: str, seed: int) -> list[Sample]:
    """``n`` distinct samples of ``domain`` from ``split`` (``train`` or ``eval``).

    Answers are balanced (each answer occurs ``n // len(answers)`` or one more times, in random
    order). The result depends only on ``(domain, n, split, seed)``; a longer list from the same
    arguments is not an extension of a shorter one.
    """
    spec = get_domain(domain)
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose from: {', '.join(SPLITS)}")
    if n < 0:
        raise ConfigError(f"the number of samples must be >= 0, got {n}")
    rng = _rng(domain, split, seed)
    answers = [spec.answers[i % len(spec.answers)] for i in range(n)]
    order = rng.permutation(n)
    seen: set[str] = set()
    samples: list[Sample] = []
    for index, position in enumerate(order):
        answer = answers[int(position)]
        for _ in range(_MAX_TRIES):
            scene = spec.sample_scene(rng, answer)
            key = scene.key()
            if key not in seen and split_of(domain, key) == split:
                break
        else:
            raise ConfigError(
                f"could not draw {n} distinct {split} samples for domain {domain!r}; ask for fewer"
            )
        seen.add(key)
        samples.append(
            Sample(
                uid=f"{domain}-{split}-{index:05d}",
                domain=domain,
                split=split,
                question=spec.question,
                answer=answer,
                key=key,
                png=_png(render(scene)),
            )
        )
    logger.debug("generated %d %s samples of domain %s (seed %d)", n, split, domain, seed)
    return samples


# --------------------------------------------------------------------------------------------------
# writing


_LMMS_UTILS = '''\
"""lmms-eval hooks for one synthetic merge-proxy domain (written by merge_proxy.testing.domains).

Image paths in data.jsonl are relative to this file's folder, so the folder can be moved.
"""

import os
import string

from PIL import Image

_HERE = os.path.dirname(os.path.abspath(__file__))
_STRIP = string.whitespace + string.punctuation


def doc_to_visual(doc):
    with Image.open(os.path.join(_HERE, doc["image"])) as image:
        return [image.convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{doc['question']}{kwargs.get('post_prompt', '')}"


def normalize(text):
    return str(text).strip().lower().rstrip(_STRIP)


def process_results(doc, results, **kwargs):
    prediction = results[0] if results else ""
    return {"exact_match": float(normalize(prediction) == normalize(doc["answer"]))}
'''


def _task_yaml(task: str, domain: str) -> str:
    q = json.dumps  # JSON strings are valid YAML double-quoted scalars
    return f"""\
# lmms-eval task for the synthetic merge-proxy domain {q(domain)} (written by merge_proxy.testing.domains).
# data_files is relative to this file: lmms-eval >= 0.7.3 resolves it against the YAML's folder.
task: {q(task)}
dataset_path: json
dataset_kwargs:
  data_files:
    test: data.jsonl
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
process_results: !function utils.process_results
generation_kwargs:
  max_new_tokens: 8
  temperature: 0
  do_sample: false
  num_beams: 1
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
lmms_eval_specific_kwargs:
  default:
    pre_prompt: ""
    post_prompt: ""
metadata:
  version: 0.0
"""


def _group_yaml(group: str, tasks: Sequence[str]) -> str:
    lines = [
        "# lmms-eval group of the synthetic merge-proxy domains (written by merge_proxy.testing.domains).",
        f"group: {json.dumps(group)}",
        "task:",
        *(f"  - {json.dumps(t)}" for t in tasks),
        "aggregate_metric_list:",
        "  - metric: exact_match",
        "    aggregation: mean",
        "    weight_by_size: true",
        "metadata:",
        "  version: 0.0",
    ]
    return "\n".join(lines) + "\n"


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _prepare(root: Path, parts: Sequence[Path]) -> None:
    """Clear what an earlier :func:`write_domains` wrote; refuse to clobber anything else."""
    occupied = [p for p in parts if p.exists() and (not p.is_dir() or any(p.iterdir()))]
    if occupied and not (root / MANIFEST).is_file():
        raise ConfigError(
            f"{occupied[0]} already exists and was not written by write_domains; "
            "choose an empty output directory"
        )
    for part in occupied:
        if part.is_dir():
            shutil.rmtree(part)
        else:
            part.unlink()


def _llamafactory_entry(file_name: str) -> dict[str, object]:
    return {
        "file_name": file_name,
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {
            "role_tag": "from",
            "content_tag": "value",
            "user_tag": "human",
            "assistant_tag": "gpt",
        },
    }


def _write_llamafactory_split(lf_dir: Path, domain: str, split: str, samples: Sequence[Sample]) -> str:
    """Write one split's images and sharegpt records; returns the data file's name."""
    image_dir = lf_dir / "images" / domain / split
    image_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for sample in samples:
        (image_dir / f"{sample.uid}.png").write_bytes(sample.png)
        records.append(
            {
                "uid": sample.uid,
                "messages": [
                    {"from": "human", "value": IMAGE_PLACEHOLDER + sample.question},
                    {"from": "gpt", "value": sample.answer},
                ],
                # relative to LLaMA-Factory's media_dir, which defaults to dataset_dir
                "images": [f"images/{domain}/{split}/{sample.uid}.png"],
            }
        )
    file_name = f"synth_{domain}_{split}.json"
    _write_json(lf_dir / file_name, records)
    return file_name


def _write_lmms_eval_task(task_dir: Path, task: str, domain: str, samples: Sequence[Sample]) -> None:
    (task_dir / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for sample in samples:
        (task_dir / "images" / f"{sample.uid}.png").write_bytes(sample.png)
        record = {
            "uid": sample.uid,
            "domain": sample.domain,
            "question": sample.question,
            "answer": sample.answer,
            "image": f"images/{sample.uid}.png",
        }
        lines.append(json.dumps(record, ensure_ascii=False))
    (task_dir / "data.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (task_dir / "utils.py").write_text(_LMMS_UTILS, encoding="utf-8")
    (task_dir / f"{task}.yaml").write_text(_task_yaml(task, domain), encoding="utf-8")


def write_domains(
    out_dir: str | Path,
    domains: Sequence[str] | None = None,
    *,
    train: int = 64,
    eval: int = 32,  # shadows the builtin: the name the CLI and callers use
    seed: int = 0,
) -> DomainsLayout:
    """Generate ``domains`` (all of :data:`DOMAINS` by default) and write them under ``out_dir``.

    Layout::

        out_dir/domains.json                       what was written (DomainsLayout.to_json)
        out_dir/llamafactory/                      LLaMA-Factory dataset_dir (and default media_dir)
            dataset_info.json                      synth_<d> (train) and synth_<d>_eval, sharegpt
            synth_<d>_train.json, synth_<d>_eval.json
            images/<d>/<split>/<uid>.png           referenced relative to dataset_dir
        out_dir/lmms_eval/                         lmms-eval --include_path
            synth_all.yaml                         group of every written task
            <d>/synth_<d>.yaml, utils.py, data.jsonl, images/<uid>.png

    The lmms-eval tasks hold the eval split (the same samples as ``synth_<d>_eval``), and their
    prompt is exactly the training question. Rewriting an ``out_dir`` that this function wrote
    before replaces its output; any other non-empty ``llamafactory``/``lmms_eval`` folder is an error.
    """
    root = Path(out_dir).resolve()
    names = list(dict.fromkeys(DOMAINS if domains is None else domains))
    if not names:
        raise ConfigError("no synthetic domains to write; name at least one")
    for name in names:
        get_domain(name)
    if train < 1 or eval < 1:
        raise ConfigError(f"train and eval sizes must both be >= 1, got train={train}, eval={eval}")

    lf_dir = root / "llamafactory"
    lmms_dir = root / "lmms_eval"
    root.mkdir(parents=True, exist_ok=True)
    _prepare(root, (lf_dir, lmms_dir, root / MANIFEST))
    lf_dir.mkdir()
    lmms_dir.mkdir()

    dataset_info: dict[str, dict[str, object]] = {}
    train_datasets: dict[str, str] = {}
    eval_datasets: dict[str, str] = {}
    tasks: dict[str, str] = {}
    for name in names:
        train_samples = generate(name, train, split="train", seed=seed)
        eval_samples = generate(name, eval, split="eval", seed=seed)
        train_datasets[name] = f"synth_{name}"
        eval_datasets[name] = f"synth_{name}_eval"
        tasks[name] = f"synth_{name}"
        for dataset, split, samples in (
            (train_datasets[name], "train", train_samples),
            (eval_datasets[name], "eval", eval_samples),
        ):
            file_name = _write_llamafactory_split(lf_dir, name, split, samples)
            dataset_info[dataset] = _llamafactory_entry(file_name)
        _write_lmms_eval_task(lmms_dir / name, tasks[name], name, eval_samples)
        logger.info("wrote synthetic domain %s: %d train, %d eval samples", name, train, eval)

    _write_json(lf_dir / "dataset_info.json", dataset_info)
    (lmms_dir / f"{GROUP_TASK}.yaml").write_text(
        _group_yaml(GROUP_TASK, [tasks[n] for n in names]), encoding="utf-8"
    )
    layout = DomainsLayout(
        root=root,
        domains=tuple(names),
        seed=seed,
        train_size=train,
        eval_size=eval,
        llamafactory_dir=lf_dir,
        train_datasets=train_datasets,
        eval_datasets=eval_datasets,
        lmms_eval_dir=lmms_dir,
        tasks=tasks,
        group=GROUP_TASK,
    )
    _write_json(root / MANIFEST, layout.to_json())
    logger.info("wrote %d synthetic domains to %s", len(names), root)
    return layout


def read_layout(out_dir: str | Path) -> DomainsLayout:
    """The :class:`DomainsLayout` recorded in ``out_dir`` by an earlier :func:`write_domains`."""
    root = Path(out_dir).resolve()
    try:
        data = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{root} holds no {MANIFEST}; write it with write_domains first") from None
    return DomainsLayout(
        root=root,
        domains=tuple(data["domains"]),
        seed=int(data["seed"]),
        train_size=int(data["train_size"]),
        eval_size=int(data["eval_size"]),
        llamafactory_dir=root / data["llamafactory_dir"],
        train_datasets=dict(data["train_datasets"]),
        eval_datasets=dict(data["eval_datasets"]),
        lmms_eval_dir=root / data["lmms_eval_dir"],
        tasks=dict(data["tasks"]),
        group=str(data["group"]),
    )


__all__ = [
    "DOMAINS",
    "Domain",
    "DomainsLayout",
    "Item",
    "Sample",
    "Scene",
    "generate",
    "get_domain",
    "read_layout",
    "render",
    "split_of",
    "write_domains",
]
