"""Synthetic visual domains: determinism, split disjointness, answers, and the files both frameworks read."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from merge_proxy.errors import ConfigError
from merge_proxy.testing import domains as dm
from merge_proxy.testing.domains import DOMAINS, generate, read_layout, write_domains

TRAIN, EVAL = 24, 12


# --------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> dm.DomainsLayout:
    """All domains, small splits; read-only for the tests."""
    return write_domains(tmp_path_factory.mktemp("synth") / "out", train=TRAIN, eval=EVAL, seed=3)


@pytest.fixture(scope="module")
def datasets_cache(tmp_path_factory: pytest.TempPathFactory):
    """Keep the `datasets` cache lmms-eval writes inside the test's temporary directory."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LMMS_EVAL_DATASETS_CACHE", str(tmp_path_factory.mktemp("lmms-cache")))
        yield


@pytest.fixture(scope="module")
def task_manager(layout: dm.DomainsLayout, datasets_cache):
    """lmms-eval's TaskManager as `lmms-eval --include_path` builds it (built-in tasks included)."""
    from lmms_eval.tasks import TaskManager

    return TaskManager(include_path=str(layout.lmms_eval_dir))


def _ink(image: Image.Image) -> np.ndarray:
    """Boolean mask of the non-background pixels."""
    return np.any(np.asarray(image) != np.array(dm.BACKGROUND, dtype=np.uint8), axis=-1)


def _components(mask: np.ndarray) -> int:
    """Number of 4-connected components of ``mask``."""
    seen = np.zeros_like(mask)
    count = 0
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        count += 1
        stack = [(y, x)]
        seen[y, x] = True
        while stack:
            cy, cx = stack.pop()
            for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
    return count


# --------------------------------------------------------------------------------------------------
# generation


def test_registry_has_four_distinct_domains() -> None:
    assert {"color", "count", "shape", "digit"} <= set(DOMAINS)
    questions = [d.question for d in DOMAINS.values()]
    assert len(set(questions)) == len(questions)
    for name, domain in DOMAINS.items():
        assert domain.name == name
        assert len(domain.answers) >= 4 and len(set(domain.answers)) == len(domain.answers)
        for answer in domain.answers:
            assert answer == answer.strip().lower() and answer.isalnum(), answer
    assert DOMAINS["count"].answers == ("1", "2", "3", "4")
    assert DOMAINS["digit"].answers == tuple("0123456789")


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_generation_is_deterministic_per_seed(domain: str) -> None:
    first = generate(domain, 20, split="train", seed=7)
    again = generate(domain, 20, split="train", seed=7)
    other = generate(domain, 20, split="train", seed=8)
    assert [s.png for s in first] == [s.png for s in again]
    assert first == again
    assert [s.png for s in first] != [s.png for s in other]
    assert len({s.uid for s in first}) == 20


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_samples_are_small_rgb_images_with_the_domain_question(domain: str) -> None:
    for sample in generate(domain, 5, split="eval", seed=0):
        image = sample.image
        assert image.mode == "RGB" and image.size == (56, 56)
        assert sample.question == DOMAINS[domain].question
        assert sample.domain == domain and sample.split == "eval"
        assert _ink(image).any(), "the image is blank"


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_train_and_eval_are_disjoint_even_across_seeds(domain: str) -> None:
    train = generate(domain, 200, split="train", seed=0)
    evals = generate(domain, 80, split="eval", seed=0) + generate(domain, 80, split="eval", seed=1)
    assert len({s.key for s in train}) == len(train), "a scene repeats within train"
    assert not {s.key for s in train} & {s.key for s in evals}
    assert not {s.png for s in train} & {s.png for s in evals}
    for sample in train[:20]:
        assert dm.split_of(domain, sample.key) == "train"
    for sample in evals[:20]:
        assert dm.split_of(domain, sample.key) == "eval"


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_answers_are_in_vocabulary_and_balanced(domain: str) -> None:
    vocab = DOMAINS[domain].answers
    n = 3 * len(vocab) + 2
    counts = Counter(s.answer for s in generate(domain, n, split="train", seed=0))
    assert set(counts) == set(vocab)
    assert max(counts.values()) - min(counts.values()) <= 1


def test_color_images_show_only_the_answer_colour() -> None:
    for sample in generate("color", 24, split="train", seed=0):
        pixels = np.asarray(sample.image)[_ink(sample.image)]
        assert (pixels == np.array(dm.COLORS[sample.answer])).all(), sample.uid


def test_count_images_show_answer_many_separate_shapes() -> None:
    for sample in generate("count", 32, split="train", seed=0):
        assert _components(_ink(sample.image)) == int(sample.answer), sample.uid


def test_digit_images_are_the_scaled_up_bitmap_glyph() -> None:
    for sample in generate("digit", 20, split="eval", seed=0):
        ink = _ink(sample.image)
        rows, cols = np.nonzero(ink)
        crop = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        scale = crop.shape[0] // 7
        assert scale >= 3 and crop.shape[0] == 7 * scale
        glyph = np.asarray(dm._glyph(sample.answer)) > 0
        assert np.array_equal(crop[::scale, ::scale], glyph), sample.uid


def test_shape_domain_draws_the_named_shape() -> None:
    for sample in generate("shape", 25, split="train", seed=0):
        ink = _ink(sample.image)
        rows, cols = np.nonzero(ink)
        box = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        fill = box.mean()
        top, bottom = box[0].sum(), box[-1].sum()
        corner = box[0, 0] or box[0, -1] or box[-1, 0] or box[-1, -1]
        expected = {
            "square": fill == 1.0,
            "circle": 0.65 < fill < 0.9 and not corner,
            "triangle": top <= 3 and bottom == box.shape[1],
            "diamond": top <= 3 and bottom <= 3 and 0.4 < fill < 0.65,
            "cross": not corner and box[box.shape[0] // 2].all() and box[:, box.shape[1] // 2].all() and fill < 0.65,
        }
        assert expected[sample.answer], (sample.uid, sample.answer, fill)


def test_generate_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="unknown synthetic domain"):
        generate("smell", 3, split="train", seed=0)
    with pytest.raises(ConfigError, match="unknown split"):
        generate("color", 3, split="test", seed=0)
    with pytest.raises(ConfigError):
        generate("color", -1, split="train", seed=0)
    assert generate("color", 0, split="train", seed=0) == []


# --------------------------------------------------------------------------------------------------
# LLaMA-Factory files


def test_dataset_info_has_sharegpt_entries_per_domain_and_split(layout: dm.DomainsLayout) -> None:
    info = json.loads((layout.llamafactory_dir / "dataset_info.json").read_text())
    expected = {f"synth_{d}" for d in DOMAINS} | {f"synth_{d}_eval" for d in DOMAINS}
    assert set(info) == expected
    assert layout.train_datasets == {d: f"synth_{d}" for d in DOMAINS}
    assert layout.eval_datasets == {d: f"synth_{d}_eval" for d in DOMAINS}
    for name, entry in info.items():
        assert entry["formatting"] == "sharegpt"
        assert entry["columns"] == {"messages": "messages", "images": "images"}
        assert entry["tags"] == {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"}
        records = json.loads((layout.llamafactory_dir / entry["file_name"]).read_text())
        assert len(records) == (EVAL if name.endswith("_eval") else TRAIN)
        domain = DOMAINS[name.removeprefix("synth_").removesuffix("_eval")]
        for record in records:
            human, gpt = record["messages"]
            assert human == {"from": "human", "value": "<image>" + domain.question}
            assert gpt["from"] == "gpt" and gpt["value"] in domain.answers
            (image,) = record["images"]
            assert not Path(image).is_absolute()
            assert (layout.llamafactory_dir / image).is_file()


def test_written_files_match_generate(layout: dm.DomainsLayout) -> None:
    info = json.loads((layout.llamafactory_dir / "dataset_info.json").read_text())
    for split, size, names in (("train", TRAIN, layout.train_datasets), ("eval", EVAL, layout.eval_datasets)):
        samples = generate("digit", size, split=split, seed=3)
        records = json.loads((layout.llamafactory_dir / info[names["digit"]]["file_name"]).read_text())
        assert [r["messages"][1]["value"] for r in records] == [s.answer for s in samples]
        assert [(layout.llamafactory_dir / r["images"][0]).read_bytes() for r in records] == [s.png for s in samples]


def test_llamafactory_loader_accepts_the_datasets(layout: dm.DomainsLayout, tmp_path: Path, monkeypatch) -> None:
    from llamafactory.data.loader import _get_merged_dataset
    from llamafactory.hparams import DataArguments

    monkeypatch.chdir(tmp_path)  # image paths must resolve through dataset_dir, not the cwd
    names = [layout.train_datasets["shape"], layout.eval_datasets["shape"]]
    data_args = DataArguments(dataset_dir=str(layout.llamafactory_dir), dataset=",".join(names))
    assert data_args.media_dir == str(layout.llamafactory_dir)
    model_args = SimpleNamespace(cache_dir=str(tmp_path / "cache"), hf_hub_token=None)
    training_args = SimpleNamespace(local_process_index=0, seed=0, dataloader_num_workers=0)
    loaded = _get_merged_dataset(names, model_args, data_args, training_args, stage="sft", return_dict=True)
    for name, size in zip(names, (TRAIN, EVAL)):
        rows = list(loaded[name])
        assert len(rows) == size
        for row in rows:
            assert [m["role"] for m in row["_prompt"]] == ["user"]
            assert row["_prompt"][0]["content"] == "<image>" + DOMAINS["shape"].question
            assert row["_response"][0]["role"] == "assistant"
            assert row["_response"][0]["content"] in DOMAINS["shape"].answers
            (image,) = row["_images"]
            assert Path(image).is_absolute() and Path(image).is_file(), image


# --------------------------------------------------------------------------------------------------
# write_domains behaviour


def test_manifest_round_trips(layout: dm.DomainsLayout) -> None:
    assert read_layout(layout.root) == layout
    assert layout.tasks == {d: f"synth_{d}" for d in DOMAINS}
    assert layout.group == "synth_all"
    assert (layout.seed, layout.train_size, layout.eval_size) == (3, TRAIN, EVAL)


def test_rewrite_replaces_earlier_output_and_subsets_work(tmp_path: Path) -> None:
    write_domains(tmp_path, ["color", "digit", "color"], train=4, eval=2)
    again = write_domains(tmp_path, ["count"], train=4, eval=2)
    assert again.domains == ("count",)
    info = json.loads((again.llamafactory_dir / "dataset_info.json").read_text())
    assert set(info) == {"synth_count", "synth_count_eval"}
    assert sorted(p.name for p in again.lmms_eval_dir.iterdir()) == ["count", "synth_all.yaml"]
    assert not (again.llamafactory_dir / "images" / "color").exists()


def test_write_refuses_foreign_folders_and_bad_arguments(tmp_path: Path) -> None:
    (tmp_path / "lmms_eval").mkdir()
    (tmp_path / "lmms_eval" / "mine.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not written by write_domains"):
        write_domains(tmp_path, ["color"], train=2, eval=2)
    assert (tmp_path / "lmms_eval" / "mine.txt").read_text() == "keep me"
    with pytest.raises(ConfigError, match="unknown synthetic domain"):
        write_domains(tmp_path / "x", ["colour"])
    with pytest.raises(ConfigError, match=">= 1"):
        write_domains(tmp_path / "y", ["color"], eval=0)


# --------------------------------------------------------------------------------------------------
# lmms-eval tasks


def test_lmms_eval_indexes_every_task_and_the_group(layout: dm.DomainsLayout, task_manager) -> None:
    for domain, task in layout.tasks.items():
        assert task_manager.task_index[task]["type"] == "task"
        # built-in tasks win name clashes, so the yaml_path proves the task is ours
        assert Path(task_manager.task_index[task]["yaml_path"]) == layout.lmms_eval_dir / domain / f"{task}.yaml"
    assert task_manager.task_index["synth_all"]["type"] == "group"
    assert Path(task_manager.task_index["synth_all"]["yaml_path"]) == layout.lmms_eval_dir / "synth_all.yaml"


@pytest.mark.parametrize("domain", ["color", "digit"])
def test_lmms_eval_task_builds_and_scores(layout: dm.DomainsLayout, task_manager, domain: str) -> None:
    task = task_manager.load_task_or_group([layout.tasks[domain]])[layout.tasks[domain]]
    docs = list(task.test_docs())
    samples = generate(domain, EVAL, split="eval", seed=3)
    assert [d["answer"] for d in docs] == [s.answer for s in samples]
    question = DOMAINS[domain].question
    for doc, sample in zip(docs, samples):
        (image,) = task.doc_to_visual(doc)
        assert isinstance(image, Image.Image) and image.size == (56, 56)
        assert image.tobytes() == sample.image.tobytes()
        assert task.doc_to_text(doc) == question
        assert task.doc_to_target(doc) == sample.answer
        wrong = next(a for a in DOMAINS[domain].answers if a != sample.answer)
        assert task.process_results(doc, [sample.answer]) == {"exact_match": 1.0}
        assert task.process_results(doc, [f"  {sample.answer.upper()}.\n"]) == {"exact_match": 1.0}
        assert task.process_results(doc, [wrong]) == {"exact_match": 0.0}
        assert task.process_results(doc, [""]) == {"exact_match": 0.0}
    assert task.config.generation_kwargs["max_new_tokens"] <= 16
    assert task.config.generation_kwargs["do_sample"] is False
    assert task.aggregation()["exact_match"]([1.0, 0.0, 1.0, 1.0]) == 0.75
    assert task.higher_is_better()["exact_match"] is True


def test_lmms_eval_group_holds_every_written_task(layout: dm.DomainsLayout, task_manager) -> None:
    loaded = task_manager.load_task_or_group(["synth_all"])
    ((group, subtasks),) = loaded.items()
    assert group.group_name == "synth_all"
    assert set(subtasks) == set(layout.tasks.values())


def test_lmms_eval_task_folder_can_be_moved(tmp_path: Path, datasets_cache) -> None:
    from lmms_eval.tasks import TaskManager

    written = write_domains(tmp_path / "orig", ["count"], train=2, eval=3, seed=1)
    moved = tmp_path / "moved"
    shutil.copytree(written.lmms_eval_dir, moved)
    shutil.rmtree(written.root)
    manager = TaskManager(include_path=str(moved), include_defaults=False)
    task = manager.load_task_or_group(["synth_count"])["synth_count"]
    docs = list(task.test_docs())
    assert len(docs) == 3
    (image,) = task.doc_to_visual(docs[0])
    assert image.size == (56, 56)
    assert str(moved) in str(task.config.dataset_kwargs["data_files"]["test"])
