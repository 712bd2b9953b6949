"""``tinystories:valid`` and ``tinystories:train``: the TinyStories corpus (Eldan & Li, 2023,
"TinyStories: How Small Can Language Models Be and Still Speak Coherent English?",
arXiv:2305.07759), dataset ``roneneldan/TinyStories`` on the Hugging Face Hub.

The text files are fetched once with :func:`huggingface_hub.hf_hub_download` into the usual
Hugging Face cache (``HF_HOME`` / ``HF_HUB_CACHE``) and then read from there, also offline.
Stories are separated by a line ``<|endoftext|>``; each story becomes one document. The file
is streamed line by line, so a 1 MB budget reads about 1 MB of a 2 GB file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from mugpt.corpus.sources import Chunk, Source
from mugpt.errors import StreamError

REPO_ID = "roneneldan/TinyStories"
SPLITS = {"valid": "TinyStories-valid.txt", "train": "TinyStories-train.txt"}
SEPARATOR = b"<|endoftext|>"


def _filename(split: str) -> str:
    if split not in SPLITS:
        raise StreamError(f"unknown TinyStories split '{split}'; use one of: {', '.join(SPLITS)}")
    return SPLITS[split]


def tinystories_cached(split: str = "valid") -> bool:
    """Whether the split's file is already in the local Hugging Face cache (no network).

    >>> isinstance(tinystories_cached("valid"), bool)
    True
    """
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(REPO_ID, _filename(split), repo_type="dataset")
    return isinstance(found, str) and Path(found).is_file()


def tinystories_path(split: str = "valid") -> Path:
    """The local path of a TinyStories split, downloading it into the cache if needed.

    A cached copy is used without asking the network. Offline (``HF_HUB_OFFLINE=1``), when the
    hub's host does not answer within ``CONNECT_TIMEOUT_S``, or on a failed download, a
    missing file raises one :class:`StreamError` saying how to get it, in seconds.
    """
    import huggingface_hub
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    filename = _filename(split)
    cached = try_to_load_from_cache(REPO_ID, filename, repo_type="dataset")
    if isinstance(cached, str) and Path(cached).is_file():
        return Path(cached)
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        why = "offline mode (HF_HUB_OFFLINE=1) is on"
    else:
        # the hub client retries a failed connection with a back-off of many seconds; a
        # machine that cannot reach the hub at all is told so at once instead
        why = _unreachable(huggingface_hub.constants.ENDPOINT)
    if not why:
        try:
            return Path(hf_hub_download(REPO_ID, filename, repo_type="dataset"))
        except Exception as e:  # no network, hub errors: all end in the same advice
            why = f"download failed ({type(e).__name__})"
    raise StreamError(
        f"TinyStories file {filename} is not in the Hugging Face cache and {why}; "
        f"get it while online with `hf download {REPO_ID} {filename} --repo-type dataset` "
        f"(or `huggingface-cli download ...` on older versions), "
        f"or use file:PATH with a local copy"
    )


#: Seconds to wait for a TCP connection to the hub before calling it unreachable.
CONNECT_TIMEOUT_S = 3.0


def _unreachable(endpoint: str) -> str:
    """'' if a TCP connection to the hub's host opens within ``CONNECT_TIMEOUT_S``, else why not.

    >>> _unreachable("http://127.0.0.1:9")  # the discard port: nothing listens there
    'the hub (http://127.0.0.1:9) cannot be reached (ConnectionRefusedError)'
    """
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            return ""
    except OSError as e:
        return f"the hub ({endpoint}) cannot be reached ({type(e).__name__})"


def iter_stories(path: Path) -> Iterator[bytes]:
    """Stories of a TinyStories text file, each stripped and ending in one newline (lazy)."""
    lines: list[bytes] = []
    with open(path, "rb") as f:
        for line in f:
            if line.strip() == SEPARATOR:
                story = b"".join(lines).strip()
                lines.clear()
                if story:
                    yield story + b"\n"
            else:
                lines.append(line)
    story = b"".join(lines).strip()
    if story:
        yield story + b"\n"


class TinyStoriesSource(Source):
    """``tinystories:SPLIT`` — TinyStories, one document per story, read lazily."""

    needs_budget = True

    def __init__(self, split: str = "valid") -> None:
        super().__init__(f"tinystories:{split}")
        self.split = split
        self.path = tinystories_path(split)

    def _chunks(self) -> Iterator[Chunk]:
        for story in iter_stories(self.path):
            yield story, True
