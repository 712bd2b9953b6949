"""TinyStories through a fake Hugging Face cache in the real cache layout, offline."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import huggingface_hub.constants
import pytest

from mugpt.corpus import build_stream, tinystories, tinystories_cached
from mugpt.corpus.tinystories import REPO_ID, iter_stories
from mugpt.errors import StreamError

COMMIT = "0123456789abcdef0123456789abcdef01234567"
STORIES = [
    "Once upon a time, there was a cat.\nThe cat was happy.",
    "Tom had a red ball. He played all day.",
    "The end came soon.",
]
VALID_TEXT = "\n<|endoftext|>\n".join(STORIES) + "\n"


def make_fake_cache(hub: Path, files: dict[str, str]) -> None:
    """The layout huggingface_hub uses: datasets--OWNER--NAME/{refs/main, snapshots/COMMIT/}."""
    repo = hub / ("datasets--" + REPO_ID.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for name, text in files.items():
        (snapshot / name).write_text(text)


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty, offline Hugging Face cache (env vars and the already-imported constants)."""
    hub = tmp_path / "hf" / "hub"
    hub.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return hub


def test_fake_cache_layout_is_what_hf_hub_download_reads(offline_hub: Path) -> None:
    make_fake_cache(offline_hub, {"TinyStories-valid.txt": VALID_TEXT})
    path = huggingface_hub.hf_hub_download(REPO_ID, "TinyStories-valid.txt", repo_type="dataset")
    assert Path(path).read_text() == VALID_TEXT


def test_stories_are_documents(offline_hub: Path) -> None:
    make_fake_cache(offline_hub, {"TinyStories-valid.txt": VALID_TEXT})
    assert tinystories_cached("valid") and not tinystories_cached("train")
    with pytest.warns(UserWarning, match="cut short"):
        s = build_stream("ts=tinystories:valid:10k")
    expected = b"".join(story.encode() + b"\n" for story in STORIES)
    assert s.data == expected  # budget larger than the file: the phase takes what is there
    assert s.notes and "cut short" in s.notes[0]
    lengths = [len(story) + 1 for story in STORIES]
    assert s.doc_starts.tolist() == [0, lengths[0], lengths[0] + lengths[1]]


def test_budget_reads_only_a_prefix_and_revisit_continues(offline_hub: Path) -> None:
    make_fake_cache(offline_hub, {"TinyStories-valid.txt": VALID_TEXT})
    s = build_stream("ts=tinystories:20,r=random:5,ts=tinystories:valid:30")
    assert s.data[:20] == STORIES[0].encode()[:20]
    assert s.data[25:55] == (STORIES[0].encode() + b"\n" + STORIES[1].encode())[20:50]


def test_offline_and_not_cached_is_one_clear_error(offline_hub: Path) -> None:
    assert not tinystories_cached("valid")
    with pytest.raises(StreamError) as err:
        build_stream("tinystories:valid:1k")
    message = str(err.value)
    assert "TinyStories-valid.txt" in message
    assert f"download {REPO_ID} TinyStories-valid.txt --repo-type dataset" in message
    assert "file:PATH" in message and "offline" in message and "\n" not in message
    with pytest.raises(StreamError, match="unknown TinyStories split"):
        tinystories_cached("test")


def test_network_failure_is_the_same_clear_error(
    offline_hub: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    def no_network(*args: object, **kwargs: object) -> str:
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    monkeypatch.setattr(tinystories, "_unreachable", lambda endpoint: "")  # the host answers
    with pytest.raises(StreamError, match=r"download failed \(ConnectionError\).*file:PATH"):
        build_stream("tinystories:train:1k")


def test_unreachable_hub_fails_at_once_without_the_clients_retries(
    offline_hub: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Online mode, but the hub's host refuses connections: the error comes before any
    download is tried (the client would retry with a back-off of many seconds)."""
    with socket.socket() as s:  # a loopback port that was just free: nothing listens on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    tried: list[object] = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: tried.append(a))
    with pytest.raises(StreamError) as err:
        build_stream("tinystories:valid:1k")
    assert tried == []
    message = str(err.value)
    assert f"the hub (http://127.0.0.1:{port}) cannot be reached" in message
    assert "ConnectionRefusedError" in message and "file:PATH" in message


def test_iter_stories_handles_blank_and_trailing_parts(tmp_path: Path) -> None:
    f = tmp_path / "t.txt"
    f.write_bytes(b"<|endoftext|>\n  A story.  \n<|endoftext|>\n\n<|endoftext|>\nLast, cut off")
    assert list(iter_stories(f)) == [b"A story.\n", b"Last, cut off\n"]


def test_fresh_process_with_offline_env_reads_fake_cache(tmp_path: Path) -> None:
    """The real path: HF_HOME and HF_HUB_OFFLINE set before huggingface_hub is imported."""
    hub = tmp_path / "hf" / "hub"
    make_fake_cache(hub, {"TinyStories-valid.txt": VALID_TEXT})
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env |= {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    code = (
        "from mugpt.corpus import build_stream, tinystories_cached;"
        "print(tinystories_cached('valid'), len(build_stream('tinystories:valid:30')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "30"]
