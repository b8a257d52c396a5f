"""``python -m merge_proxy.tasks``: print the directory to pass as lmms-eval's ``--include_path``."""

from merge_proxy.tasks import tasks_dir

print(tasks_dir())
