"""merge_proxy.tasks: chartqa, pope and CV-Bench Count scored with the reference protocol's tolerant metrics.

The metrics are checked on answers whose verdict differs between the stock metric and the reference's
(the reference's definitions: its patched lmms-eval, ``utils/eval_bench_utils.py``), then the shipped
YAML files run through the real lmms-eval 0.7.3 on small local copies of each dataset's layout, with a
model that gives canned answers.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from merge_proxy.tasks import TASKS, tasks_dir

SCRIPTS = Path(sys.executable).parent


def metrics():
    import importlib.util

    spec = importlib.util.spec_from_file_location("paper_metrics", tasks_dir() / "paper_metrics.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_chartqa_soft_drops_trailing_dots_only():
    m = metrics()
    doc = {"answer": "Yes", "type": "human_test"}
    assert m.chartqa_soft_process_results(doc, ["Yes."]) == {
        "relaxed_overall": 0.0, "relaxed_human_split": 0.0, "relaxed_overall_soft": 1.0}
    assert m.chartqa_soft_process_results({"answer": "12", "type": "augmented_test"}, ["12.4"])["relaxed_overall_soft"] == 1.0
    assert m.chartqa_soft_process_results(doc, ["Yes, it is."])["relaxed_overall_soft"] == 0.0


@pytest.mark.parametrize(("answer", "soft", "strict"), [
    ("Yes.", 1.0, 0.0), ("yes", 1.0, 1.0), ("Yes, there is a dog.", 1.0, 0.0), ("No:", 0.0, 0.0),
    ("", 0.0, 0.0), ("   ", 0.0, 0.0), ("There is one", 0.0, 0.0),
])
def test_pope_soft_reads_the_first_word(answer, soft, strict):
    scores = metrics().pope_soft_process_results({"answer": "yes", "question_id": 7}, [answer])
    assert (scores["pope_accuracy_soft"]["score"], scores["pope_accuracy"]["score"]) == (soft, strict)


@pytest.mark.parametrize(("reply", "softer", "strict"), [
    ("3", 1.0, 0.0),          # the option's text is that option
    ("(B)", 1.0, 1.0),
    ("B. 3", 1.0, 1.0),
    ("Answer:3", 1.0, 0.0),   # "Answer:" removed
    ("Answer: 3", 0.0, 0.0),  # as the reference: the space stays, " 3" is no option, no letter either
    ("Answer: B", 1.0, 0.0),  # the stock parser reads the "A" of "Answer"
    ("4", 0.0, 0.0),
])
def test_cv_bench_count_softer_matches_option_texts(reply, softer, strict):
    doc = {"answer": "(B)", "choices": ["2", "3", "4"]}
    assert metrics().cv_bench_count_process_results(doc, [reply]) == {"count_acc_softer": softer, "count_acc": strict}


# ------------------------------------------------------------------------------------ through lmms-eval


def _image():
    from PIL import Image

    return Image.new("RGB", (28, 28), (200, 30, 30))


# Per task: rows in the dataset's layout (the fields the stock functions read), the reply to each row's
# question (by its [qN] marker), and the expected (tolerant, stock) scores.
DATASETS = {
    "cv_bench_2d_count": (
        [
            {"idx": 0, "type": "2D", "task": "Count", "source": "COCO", "prompt": "[q0] How many cups?", "choices": ["2", "3", "4"], "answer": "(B)"},
            {"idx": 1, "type": "2D", "task": "Count", "source": "ADE20K", "prompt": "[q1] How many cars?", "choices": ["1", "5"], "answer": "(A)"},
            {"idx": 2, "type": "2D", "task": "Count", "source": "COCO", "prompt": "[q2] How many dogs?", "choices": ["0", "1", "2"], "answer": "(C)"},
            {"idx": 3, "type": "2D", "task": "Count", "source": "COCO", "prompt": "[q3] How many cats?", "choices": ["6", "7"], "answer": "(A)"},
            {"idx": 4, "type": "2D", "task": "Relation", "source": "COCO", "prompt": "[q4] Is the cup left of the car?", "choices": ["left", "right"], "answer": "(A)"},
        ],
        {"q0": "3", "q1": "(A)", "q2": "Answer: 2", "q3": "B", "q4": "left"},
        ("count_acc_softer", 0.5, "count_acc", 0.25),
    ),
    "pope_soft": (
        [
            {"question_id": "0", "question": "[q0] Is there a dog?", "answer": "yes"},
            {"question_id": "1", "question": "[q1] Is there a cat?", "answer": "no"},
            {"question_id": "2", "question": "[q2] Is there a car?", "answer": "yes"},
            {"question_id": "3", "question": "[q3] Is there a bus?", "answer": "no"},
        ],
        {"q0": "Yes.", "q1": "no", "q2": "Yes, there is.", "q3": "yes"},
        ("pope_accuracy_soft", 0.75, "pope_accuracy", 0.25),
    ),
    "chartqa_soft": (
        [
            {"question": "[q0] Is the bar red?", "answer": "Yes", "type": "human_test"},
            {"question": "[q1] What is the value?", "answer": "12", "type": "augmented_test"},
            {"question": "[q2] Which colour?", "answer": "Red", "type": "human_test"},
        ],
        {"q0": "Yes.", "q1": "12.4", "q2": "Blue"},
        ("relaxed_overall_soft", 2 / 3, "relaxed_overall", 1 / 3),
    ),
}


def _local_copy(task: str, rows: list[dict], root: Path) -> Path:
    """The shipped task YAML (and the module it loads) over a local parquet file in the dataset's layout."""
    import shutil

    from datasets import Dataset, Image

    folder = root / task
    folder.mkdir(parents=True)
    data = folder / "test.parquet"
    Dataset.from_list([{**r, "image": _image()} for r in rows]).cast_column("image", Image()).to_parquet(str(data))
    shutil.copy(tasks_dir() / "paper_metrics.py", folder)
    text = (tasks_dir() / f"{task}.yaml").read_text(encoding="utf-8")
    text = re.sub(r"^dataset_path: .*$", "dataset_path: parquet", text, flags=re.M)
    text = re.sub(r"^dataset_name: .*\n", "", text, flags=re.M)
    text = re.sub(r"^dataset_kwargs:\n(  .*\n)+", "", text, flags=re.M)
    text += f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
    (folder / f"{task}.yaml").write_text(text, encoding="utf-8")
    return folder


@pytest.mark.parametrize("task", TASKS)
def test_shipped_task_runs_in_lmms_eval_with_the_reference_metric(tmp_path, task):
    from lmms_eval.api.model import lmms
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    rows, replies, (soft, soft_value, stock, stock_value) = DATASETS[task]
    _local_copy(task, rows, tmp_path)
    asked: list[str] = []

    class Canned(lmms):
        def generate_until(self, requests):
            out = []
            for request in requests:
                marker = re.search(r"\[(q\d+)\]", request.args[0]).group(1)
                asked.append(marker)
                out.append(replies[marker])
            return out

        def loglikelihood(self, requests):
            raise NotImplementedError

        def generate_until_multi_round(self, requests):
            raise NotImplementedError

    results = simple_evaluate(model=Canned(), tasks=[task], task_manager=TaskManager(include_path=str(tmp_path)),
                              log_samples=False, bootstrap_iters=0, verbosity="WARNING")["results"][task]
    assert results[f"{soft},none"] == pytest.approx(soft_value)
    assert results[f"{stock},none"] == pytest.approx(stock_value)
    counted = [r for r in rows if r.get("task", "Count") == "Count"]
    assert sorted(asked) == sorted(re.search(r"\[(q\d+)\]", r.get("prompt") or r["question"]).group(1) for r in counted)
    # the shipped file differs from the copy only in where the data comes from
    shipped = yaml.load((tasks_dir() / f"{task}.yaml").read_text(), Loader=_Permissive)
    copied = yaml.load((tmp_path / task / f"{task}.yaml").read_text(), Loader=_Permissive)
    assert {k: v for k, v in shipped.items() if not k.startswith("dataset")} == \
        {k: v for k, v in copied.items() if not k.startswith("dataset")}


class _Permissive(yaml.SafeLoader):
    """Reads lmms-eval's ``!function`` tags as plain text."""


_Permissive.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")


def test_module_prints_the_include_path_for_the_lmms_eval_command_line():
    proc = subprocess.run([str(SCRIPTS / "python"), "-m", "merge_proxy.tasks"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == str(tasks_dir())
    assert sorted(p.stem for p in tasks_dir().glob("*.yaml")) == sorted(TASKS)
