"""The Hub emulator against the real ``huggingface_hub`` client.

``huggingface_hub`` reads ``HF_ENDPOINT`` at import time, so every client interaction runs in a
subprocess configured only through the environment (``HubEmulator.client_env``): exactly how a
user's code meets the emulator. Protocol details the client never exercises (atomicity, path
validation, status codes) are checked with plain HTTP requests.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from merge_proxy.errors import ConfigError
from merge_proxy.testing.hub import HubEmulator, InvalidCard, derive_tags, parse_card

if TYPE_CHECKING:
    from huggingface_hub import HfApi

pytest_plugins = ["merge_proxy.testing.hub.pytest_fixtures"]

BIG_FILE_BYTES = 12 * 1024 * 1024  # above the 10 MiB the Hub would send through LFS

ADAPTER_README = """\
---
license: apache-2.0
library_name: peft
pipeline_tag: text-generation
base_model: acme/base-7b
base_model_relation: adapter
datasets:
- acme/instructions
tags:
- merge-proxy
- expert
---
# An adapter
"""

_PRELUDE = """\
import hashlib, json, os, sys
from pathlib import Path
import huggingface_hub
from huggingface_hub import HfApi, ModelCard, hf_hub_download, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

def emit(value):
    print(json.dumps(value))

def digests(folder):
    root = Path(folder)
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and ".cache" not in p.parts}

def status_of(call):
    try:
        call()
    except RepositoryNotFoundError:
        return "RepositoryNotFoundError"
    except HfHubHTTPError as err:
        return err.response.status_code
    return "ok"

api = HfApi()
"""


def run_client(hub: HubEmulator, workdir: Path, script: str, *, token: str | bool | None = None) -> Any:
    """Run ``script`` with the real client in a fresh interpreter; returns what it ``emit``-ted last."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **hub.client_env(token=token, hf_home=workdir / "hf-home")}
    proc = subprocess.run(
        [sys.executable, "-c", _PRELUDE + textwrap.dedent(script)],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"client script failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def sha256_tree(folder: Path) -> dict[str, str]:
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def commit_ndjson(
    summary: str, files: dict[str, bytes], *, parent: str | None = None, deleted: tuple[str, ...] = ()
) -> bytes:
    """A commit body as the client builds it."""
    header: dict[str, Any] = {"summary": summary, "description": ""}
    if parent:
        header["parentCommit"] = parent
    lines = [{"key": "header", "value": header}]
    lines += [
        {
            "key": "file",
            "value": {"path": path, "encoding": "base64", "content": base64.b64encode(data).decode()},
        }
        for path, data in files.items()
    ]
    lines += [{"key": "deletedFile", "value": {"path": path}} for path in deleted]
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def post_commit(
    hub: HubEmulator, repo_id: str, body: bytes, *, token: str | bool | None = None, branch: str = "main"
) -> httpx.Response:
    headers = {"Content-Type": "application/x-ndjson"}
    if token is not False:
        headers["Authorization"] = f"Bearer {token or hub.token}"
    return httpx.post(f"{hub.endpoint}/api/models/{repo_id}/commit/{branch}", content=body, headers=headers)


@pytest.fixture
def model_folder(tmp_path: Path) -> Path:
    """A model folder with a 12 MiB random file, small files in a subfolder and an adapter card."""
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "weights.bin").write_bytes(os.urandom(BIG_FILE_BYTES))
    (folder / "config.json").write_text('{"hidden_size": 8}')
    (folder / "sub" / "notes.txt").write_text("small file\n")
    (folder / "README.md").write_text(ADAPTER_README)
    return folder


def test_upload_folder_and_download_back_by_branch_and_by_commit(
    hub_emulator: HubEmulator, model_folder: Path, tmp_path: Path
) -> None:
    result = run_client(
        hub_emulator,
        tmp_path / "client",
        f"""
        repo = api.create_repo("tester/roundtrip")
        info = api.upload_folder(
            repo_id="tester/roundtrip", folder_path={str(model_folder)!r}, commit_message="add model"
        )
        by_branch = snapshot_download("tester/roundtrip", cache_dir="cache-branch")
        by_sha = snapshot_download("tester/roundtrip", revision=info.oid, local_dir="by-sha")
        one = hf_hub_download("tester/roundtrip", "sub/notes.txt", revision=info.oid, cache_dir="cache-one")
        model = api.model_info("tester/roundtrip")
        emit({{
            "repo_id": repo.repo_id, "oid": info.oid, "sha": model.sha,
            "by_branch": digests(by_branch), "by_sha": digests(by_sha),
            "one": Path(one).read_text(),
            "sizes": {{s.rfilename: s.size for s in model.siblings}},
            "commits": [c.commit_id for c in api.list_repo_commits("tester/roundtrip")],
            "titles": [c.title for c in api.list_repo_commits("tester/roundtrip")],
            "files": sorted(api.list_repo_files("tester/roundtrip")),
            "exists": [api.file_exists("tester/roundtrip", name) for name in ("weights.bin", "nope")],
        }})
    """,
    )
    local = sha256_tree(model_folder)
    assert result["repo_id"] == "tester/roundtrip"
    assert len(result["oid"]) == 40 and result["oid"] == result["sha"] == result["commits"][0]
    for downloaded in (result["by_branch"], result["by_sha"]):
        assert {path: digest for path, digest in downloaded.items() if path != ".gitattributes"} == local
    assert result["one"] == "small file\n"
    assert result["sizes"]["weights.bin"] == BIG_FILE_BYTES
    # The Hub's "initial commit" (.gitattributes), then exactly one commit for the whole folder.
    assert result["titles"] == ["add model", "initial commit"]
    assert result["files"] == [".gitattributes", "README.md", "config.json", "sub/notes.txt", "weights.bin"]
    assert result["exists"] == [True, False]


def test_readme_metadata_becomes_tags_that_search_finds(
    hub_emulator: HubEmulator, model_folder: Path, tmp_path: Path
) -> None:
    merge_card = "---\nbase_model: [acme/a, acme/b]\nbase_model_relation: merge\nlicense: mit\n---\n"
    result = run_client(
        hub_emulator,
        tmp_path / "client",
        f"""
        api.create_repo("tester/adapter")
        api.upload_folder(repo_id="tester/adapter", folder_path={str(model_folder)!r}, commit_message="add")
        api.create_repo("tester/merged")
        api.upload_file(
            path_or_fileobj={merge_card!r}.encode(), path_in_repo="README.md", repo_id="tester/merged"
        )
        api.create_repo("tester/plain")
        def ids(**kwargs):
            return sorted(m.id for m in api.list_models(**kwargs))
        info = api.model_info("tester/adapter")
        card = ModelCard.load("tester/adapter")
        listed = next(iter(api.list_models(filter="expert", cardData=True)))
        emit({{
            "tags": info.tags, "card": info.card_data.to_dict(), "library": info.library_name,
            "pipeline": info.pipeline_tag, "loaded_card": card.data.to_dict(), "card_text": card.text,
            "by_adapter": ids(filter="base_model:adapter:acme/base-7b"),
            "by_base": ids(filter="base_model:acme/base-7b"),
            "by_dataset": ids(filter="dataset:acme/instructions"),
            "by_license": ids(filter="license:mit"),
            "anded": ids(filter=["expert", "license:mit"]),
            "by_merge": ids(filter=["base_model:merge:acme/a", "base_model:merge:acme/b"]),
            "by_author": ids(author="tester"),
            "by_search": ids(search="DAPT"),
            "nobody": ids(author="someone-else"),
            "limited": len(list(api.list_models(limit=2))),
            "newest_first": [m.id for m in api.list_models(sort="created_at")],
            "expanded": [(m.sha is not None, m.tags) for m in api.list_models(search="plain",
                                                                              expand=["sha"])],
            "listed_card": listed.card_data.to_dict() if listed.card_data else None,
        }})
    """,
    )
    for tag in (
        "merge-proxy",
        "expert",
        "peft",
        "text-generation",
        "license:apache-2.0",
        "dataset:acme/instructions",
        "base_model:acme/base-7b",
        "base_model:adapter:acme/base-7b",
    ):
        assert tag in result["tags"]
    assert result["card"]["base_model"] == "acme/base-7b"
    assert result["library"] == "peft" and result["pipeline"] == "text-generation"
    assert result["loaded_card"]["datasets"] == ["acme/instructions"]
    assert result["card_text"].strip() == "# An adapter"
    assert result["by_adapter"] == result["by_base"] == result["by_dataset"] == ["tester/adapter"]
    assert result["by_license"] == ["tester/merged"] and result["by_merge"] == ["tester/merged"]
    assert result["anded"] == []
    assert result["by_author"] == ["tester/adapter", "tester/merged", "tester/plain"]
    assert result["by_search"] == ["tester/adapter"]
    assert result["nobody"] == [] and result["limited"] == 2
    assert result["newest_first"] == ["tester/plain", "tester/merged", "tester/adapter"]
    assert result["expanded"] == [[True, None]]  # only the expanded property (and the id) is sent
    assert result["listed_card"]["license"] == "apache-2.0"


def test_private_repo_is_hidden_from_anonymous_and_other_users(tmp_path: Path) -> None:
    tokens = {"hf_alice": "alice", "hf_bob": "bob"}
    with HubEmulator(tmp_path / "data", tokens=tokens) as hub:
        result = run_client(
            hub,
            tmp_path / "client",
            """
            alice = HfApi(token="hf_alice")
            alice.create_repo("alice/secret", private=True)
            alice.upload_file(path_or_fileobj=b"classified", path_in_repo="secret.txt",
                              repo_id="alice/secret")
            anonymous, bob = HfApi(token=False), HfApi(token="hf_bob")
            def listed(client):
                return [m.id for m in client.list_models(author="alice")]
            def download(token):
                return lambda: hf_hub_download("alice/secret", "secret.txt", token=token)
            emit({
                "anonymous_info": status_of(lambda: anonymous.model_info("alice/secret")),
                "anonymous_download": status_of(download(False)),
                "bob_info": status_of(lambda: bob.model_info("alice/secret")),
                "bob_download": status_of(download("hf_bob")),
                "bob_upload": status_of(lambda: bob.upload_file(path_or_fileobj=b"x", path_in_repo="x",
                                                                repo_id="alice/secret")),
                "alice_info_private": alice.model_info("alice/secret").private,
                "alice_download": Path(download("hf_alice")()).read_text(),
                "listed": [listed(anonymous), listed(bob), listed(alice)],
                "exists": [anonymous.repo_exists("alice/secret"), alice.repo_exists("alice/secret")],
                "published": [alice.update_repo_settings("alice/secret", private=False),
                              Path(download(False)()).read_text()][1],
            })
        """,
            token=False,
        )
    assert result["anonymous_info"] == result["anonymous_download"] == "RepositoryNotFoundError"
    assert result["bob_info"] == result["bob_download"] == "RepositoryNotFoundError"
    assert result["bob_upload"] == "RepositoryNotFoundError"
    assert result["alice_info_private"] is True
    assert result["alice_download"] == "classified"
    assert result["listed"] == [[], [], ["alice/secret"]]
    assert result["exists"] == [False, True]
    assert result["published"] == "classified"  # readable by anyone once made public


def test_repo_lifecycle_datasets_branches_and_permissions(tmp_path: Path) -> None:
    tokens = {"hf_test_tester_token": "tester", "hf_other": "other"}
    with HubEmulator(tmp_path / "data", tokens=tokens) as hub:
        result = run_client(
            hub,
            tmp_path / "client",
            """
            first = api.create_repo("tester/life")
            again = api.create_repo("tester/life", exist_ok=True)
            duplicate = status_of(lambda: api.create_repo("tester/life"))
            foreign = status_of(lambda: api.create_repo("other/mine"))
            anonymous = status_of(lambda: HfApi(token=False).create_repo("tester/anon"))
            bad_token = status_of(lambda: HfApi(token="hf_wrong").model_info("tester/life"))
            other_write = status_of(lambda: HfApi(token="hf_other").upload_file(
                path_or_fileobj=b"x", path_in_repo="x", repo_id="tester/life"))
            api.create_branch("tester/life", branch="dev")
            on_dev = api.upload_file(path_or_fileobj=b"dev only", path_in_repo="dev.txt",
                                     repo_id="tester/life", revision="dev")
            dev_file = Path(hf_hub_download("tester/life", "dev.txt", revision="dev")).read_text()
            main_missing = status_of(lambda: hf_hub_download("tester/life", "dev.txt"))
            refs = api.list_repo_refs("tester/life")
            api.create_tag("tester/life", tag="v1", revision="dev")
            by_tag = Path(hf_hub_download("tester/life", "dev.txt", revision="v1")).read_text()
            api.create_commit("tester/life", commit_message="reshape", operations=[
                huggingface_hub.CommitOperationAdd("keep/a.txt", b"a"),
                huggingface_hub.CommitOperationAdd("gone/b.txt", b"b"),
                huggingface_hub.CommitOperationAdd("gone/c.txt", b"c"),
            ])
            api.create_commit("tester/life", commit_message="copy", operations=[
                huggingface_hub.CommitOperationCopy("keep/a.txt", "copied/a.txt"),
            ])
            api.delete_folder("gone", repo_id="tester/life")
            api.delete_file("keep/a.txt", repo_id="tester/life")
            reshaped = sorted(api.list_repo_files("tester/life"))
            ds = api.create_repo("tester/data", repo_type="dataset")
            card = b"---\\nlicense: cc-by-4.0\\ntask_categories: [text-generation]\\n---\\n"
            for path, content in (("README.md", card), ("data/train.csv", b"a,b\\n1,2\\n")):
                api.upload_file(path_or_fileobj=content, path_in_repo=path, repo_id="tester/data",
                                repo_type="dataset")
            ds_info = api.dataset_info("tester/data")
            csv = Path(hf_hub_download("tester/data", "data/train.csv", repo_type="dataset")).read_text()
            found = [d.id for d in api.list_datasets(filter="task_categories:text-generation")]
            api.delete_repo("tester/life")
            api.delete_repo("tester/life", missing_ok=True)
            emit({
                "urls": [str(first), str(again), ds.repo_type, str(ds)],
                "statuses": [duplicate, foreign, anonymous, bad_token, other_write, main_missing],
                "dev": [dev_file, len(on_dev.oid)],
                "branches": sorted(b.name for b in refs.branches),
                "by_tag": by_tag,
                "reshaped": reshaped,
                "ds": [ds_info.tags, ds_info.card_data.to_dict()["license"], csv, found],
                "after_delete": [api.repo_exists("tester/life"),
                                 status_of(lambda: api.delete_repo("tester/life"))],
            })
        """,
        )
        endpoint = hub.endpoint
    assert result["urls"] == [
        f"{endpoint}/tester/life",
        f"{endpoint}/tester/life",
        "dataset",
        f"{endpoint}/datasets/tester/data",
    ]
    # 409 exists, 403 foreign namespace, 401 no token, 401 unknown token, 403 other user's repo;
    # then a file that only exists on another branch.
    assert result["statuses"][:5] == [409, 403, 401, 401, 403]
    assert result["statuses"][5] != "ok"
    assert result["dev"] == ["dev only", 40]
    assert result["branches"] == ["dev", "main"]
    assert result["by_tag"] == "dev only"
    assert result["reshaped"] == [".gitattributes", "copied/a.txt"]
    tags, license_name, csv, found = result["ds"]
    assert "task_categories:text-generation" in tags and "license:cc-by-4.0" in tags
    assert license_name == "cc-by-4.0" and csv == "a,b\n1,2\n" and found == ["tester/data"]
    assert result["after_delete"] == [False, "RepositoryNotFoundError"]


def test_commit_with_malformed_readme_is_refused_and_nothing_lands(
    hub_emulator: HubEmulator, tmp_path: Path
) -> None:
    bad_readme = "---\nlicense: mit\ntags: [unclosed\n---\n# card\n"
    result = run_client(
        hub_emulator,
        tmp_path / "client",
        f"""
        api.create_repo("tester/cards")
        before = api.model_info("tester/cards").sha
        try:
            api.upload_file(
                path_or_fileobj={bad_readme!r}.encode(), path_in_repo="README.md", repo_id="tester/cards"
            )
            refused = None
        except ValueError as err:
            refused = str(err)
        emit({{"refused": refused, "before": before, "after": api.model_info("tester/cards").sha}})
    """,
    )
    assert result["refused"] and "Invalid metadata in README.md" in result["refused"]
    assert result["before"] == result["after"]

    # The server refuses it too when a client skips validate-yaml; the good file sent with it does not land.
    body = commit_ndjson("bad card", {"weights.bin": b"\x00" * 10, "README.md": bad_readme.encode()})
    response = post_commit(hub_emulator, "tester/cards", body)
    assert response.status_code == 400
    assert "does not parse" in response.json()["error"]
    record = hub_emulator.store.get_repo("model", "tester/cards")
    assert record is not None
    head = hub_emulator.store.branch_head(record, "main")
    assert head is not None and head.id == result["before"] and "weights.bin" not in head.files
    assert list((hub_emulator.data_dir / "tmp").iterdir()) == []


def test_commits_are_atomic_validated_and_guarded(hub_emulator: HubEmulator) -> None:
    hub = hub_emulator
    created = httpx.post(
        f"{hub.endpoint}/api/repos/create",
        json={"name": "atomic", "organization": None},
        headers={"Authorization": f"Bearer {hub.token}"},
    )
    assert created.status_code == 200
    good = post_commit(hub, "tester/atomic", commit_ndjson("one", {"a.txt": b"a"}))
    assert good.status_code == 200
    head = good.json()["commitOid"]

    cases = {
        "../escape.txt": 400,
        "/etc/passwd": 400,
        "a/./b": 400,
        "a//b": 400,
        ".git/config": 400,
        "a.txt/child": 400,  # a.txt is a file
    }
    for path, status in cases.items():
        response = post_commit(hub, "tester/atomic", commit_ndjson("bad", {"ok.txt": b"fine", path: b"x"}))
        assert response.status_code == status, (path, response.text)
    missing = post_commit(
        hub, "tester/atomic", commit_ndjson("bad", {"ok.txt": b"fine"}, deleted=("nope.txt",))
    )
    assert missing.status_code == 404 and missing.headers["X-Error-Code"] == "EntryNotFound"
    stale = post_commit(hub, "tester/atomic", commit_ndjson("stale", {"b.txt": b"b"}, parent="0" * 40))
    assert stale.status_code == 412
    assert (
        post_commit(hub, "tester/atomic", commit_ndjson("x", {"b.txt": b"b"}), token=False).status_code == 401
    )
    assert (
        post_commit(hub, "tester/atomic", commit_ndjson("x", {"b.txt": b"b"}), branch="nope").status_code
        == 404
    )

    record = hub.store.get_repo("model", "tester/atomic")
    assert record is not None
    after = hub.store.branch_head(record, "main")
    assert after is not None and after.id == head and sorted(after.files) == [".gitattributes", "a.txt"]
    assert len(hub.store.history(record, after)) == 2

    fresh = post_commit(
        hub, "tester/atomic", commit_ndjson("two", {"b.txt": b"b"}, parent=head, deleted=("a.txt",))
    )
    assert fresh.status_code == 200
    files = httpx.get(f"{hub.endpoint}/api/models/tester/atomic/tree/main", params={"recursive": True}).json()
    assert [entry["path"] for entry in files] == [".gitattributes", "b.txt"]
    resolved = httpx.head(f"{hub.endpoint}/tester/atomic/resolve/{head}/a.txt")  # old commit still served
    assert resolved.status_code == 200 and resolved.headers["X-Repo-Commit"] == head
    assert resolved.headers["ETag"].strip('"') == hashlib.sha1(b"blob 1\0a").hexdigest()


def test_data_survives_a_restart_on_the_same_directory(model_folder: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    with HubEmulator(data) as hub:
        first = run_client(
            hub,
            tmp_path / "first",
            f"""
            api.create_repo("tester/persist", private=True)
            info = api.upload_folder(
                repo_id="tester/persist", folder_path={str(model_folder)!r}, commit_message="m"
            )
            commits = [c.commit_id for c in api.list_repo_commits("tester/persist")]
            emit({{"oid": info.oid, "commits": commits}})
        """,
        )
    with HubEmulator(data) as hub:
        second = run_client(
            hub,
            tmp_path / "second",
            """
            emit({
                "sha": api.model_info("tester/persist").sha,
                "private": api.model_info("tester/persist").private,
                "commits": [c.commit_id for c in api.list_repo_commits("tester/persist")],
                "files": digests(snapshot_download("tester/persist", cache_dir="cache")),
                "tags": api.model_info("tester/persist").tags,
            })
        """,
        )
    assert second["sha"] == first["oid"] and second["commits"] == first["commits"]
    assert second["private"] is True
    assert {k: v for k, v in second["files"].items() if k != ".gitattributes"} == sha256_tree(model_folder)
    assert "base_model:adapter:acme/base-7b" in second["tags"]


def test_cards_parse_and_derive_tags_like_the_hub() -> None:
    card = parse_card("---\nbase_model: [org/a, org/b]\nlanguage: en\n---\ntext", "model")
    assert card is not None
    tags = derive_tags(card, "model", ["README.md"])
    assert {"base_model:org/a", "base_model:merge:org/a", "base_model:merge:org/b", "en"} <= set(tags)
    assert "base_model:adapter:org/x" in derive_tags(
        {"base_model": "org/x"}, "model", ["adapter_config.json"]
    )
    assert parse_card("# no metadata", "model") is None
    for text in (
        "---\nlicense: mit\n# never closed",
        "---\n- a list\n---\n",
        "---\ntags: {a: 1}\n---\n",
        "---\nbase_model_relation: cousin\nbase_model: org/a\n---\n",
        "---\nkey: [unclosed\n---\n",
    ):
        with pytest.raises(InvalidCard):
            parse_card(text, "model")


def test_emulator_refuses_non_loopback_hosts_busy_ports_and_shared_directories(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="loopback"):
        HubEmulator(host="0.0.0.0")
    with HubEmulator(tmp_path) as hub:
        port = int(hub.endpoint.rsplit(":", 1)[1])
        with pytest.raises(ConfigError, match="cannot listen"):
            HubEmulator(port=port).start()
        with pytest.raises(ConfigError, match="already serving"):
            HubEmulator(tmp_path).start()
        assert (
            httpx.get(
                f"{hub.endpoint}/api/whoami-v2", headers={"Authorization": f"Bearer {hub.token}"}
            ).json()["name"]
            == "tester"
        )
        unknown = httpx.get(f"{hub.endpoint}/api/spaces/tester/x")
        assert unknown.status_code == 404 and "does not implement" in unknown.json()["error"]


def test_fixtures_for_subprocesses_and_in_process_clients(
    hub_env: dict[str, str], hub_api: HfApi, hub_emulator: HubEmulator, tmp_path: Path
) -> None:
    # hub_env: a child process inherits the configuration from os.environ, no explicit env needed.
    code = "from huggingface_hub import HfApi; print(HfApi().whoami()['name'])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "tester" and hub_env["HF_ENDPOINT"] == hub_emulator.endpoint

    # hub_api: an in-process client, whatever HF_ENDPOINT was when huggingface_hub was imported.
    from huggingface_hub import hf_hub_download

    hub_api.create_repo("tester/in-process", private=True)
    commit = hub_api.upload_file(path_or_fileobj=b"hi", path_in_repo="hi.txt", repo_id="tester/in-process")
    path = hf_hub_download(
        "tester/in-process",
        "hi.txt",
        revision=commit.oid,
        endpoint=hub_emulator.endpoint,
        token=hub_emulator.token,
        cache_dir=tmp_path / "cache",
    )
    assert Path(path).read_bytes() == b"hi"
    assert hub_api.model_info("tester/in-process").sha == commit.oid


def test_a_relative_data_dir_serves_downloads(tmp_path: Path, monkeypatch) -> None:
    """`python -m merge_proxy.testing hub --data hubdata`: a path relative to the working directory (Flask
    resolved it against the server's package and answered every download with 500)."""
    from huggingface_hub import HfApi, hf_hub_download

    monkeypatch.chdir(tmp_path)
    with HubEmulator("hubdata") as hub:
        api = HfApi(endpoint=hub.endpoint, token=hub.token)
        api.create_repo("tester/rel")
        api.upload_file(path_or_fileobj=b"hello", path_in_repo="a.txt", repo_id="tester/rel")
        path = hf_hub_download("tester/rel", "a.txt", endpoint=hub.endpoint, token=hub.token, cache_dir=tmp_path / "c")
        assert Path(path).read_bytes() == b"hello"
