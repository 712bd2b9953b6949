"""Generated, seeded sources. They never run out, so their phases need a budget.

Each exercises a different ability and has a known reference point:

``random``
    Uniform random bytes. Nothing can be learned: the ideal is 8 bits per byte, and a learner
    that does better is leaking information (a sanity check of the prequential protocol).
``repeat``
    A copy task. Each document is a block of 8–48 random lowercase letters written 2–6 times,
    separated by spaces, then a newline. The first copy costs about log2(26) ≈ 4.7 bits per
    letter; later copies are free for a learner that can look back and copy (induction heads,
    a cache). It separates in-context copying from slow weight learning.
``counting``
    Decimal numbers counting up by one, one per line, from a seeded start below one million.
    Almost everything is predictable from the previous line (the last digit always increments,
    carries are rare): it rewards learning an exact algorithmic rule.
``stories``
    Short English-like stories from a small grammar (16 characters, places, things, feelings,
    dialogue). Characters' names and pronouns recur within a story, so it rewards both word
    statistics and remembering who the story is about. One document per story.

Every source draws from its own random generator seeded by ``(seed, source name)``, so a
source's bytes do not depend on the order or number of other phases.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator

import numpy as np

from mugpt.corpus.sources import Chunk, Source

#: Bytes produced per chunk by the byte-level generators (the chunking never changes output).
GEN_CHUNK = 1 << 16


def source_seed(seed: int, name: str) -> np.random.SeedSequence:
    """The seed sequence of source ``name`` in a stream built with ``seed``."""
    return np.random.SeedSequence([seed, zlib.crc32(name.encode("utf-8"))])


def _python_rng(seed: int, name: str) -> random.Random:
    state = source_seed(seed, name).generate_state(2, np.uint64)
    return random.Random(int(state[0]) << 64 | int(state[1]))


class GeneratedSource(Source):
    """Base of the seeded generators: infinite, so a budget is required."""

    finite = False
    needs_budget = True

    def __init__(self, name: str, seed: int) -> None:
        super().__init__(name)
        self.seed = seed


class RandomSource(GeneratedSource):
    """``random`` — uniform random bytes, one endless document.

    >>> data, starts = RandomSource(seed=0).read(4096)
    >>> len(data), starts, len(set(data)) > 250
    (4096, [0], True)
    """

    def __init__(self, seed: int = 0) -> None:
        super().__init__("random", seed)

    def _chunks(self) -> Iterator[Chunk]:
        rng = np.random.default_rng(source_seed(self.seed, "random"))
        while True:
            yield rng.integers(0, 256, size=GEN_CHUNK, dtype=np.uint8).tobytes(), False


class RepeatSource(GeneratedSource):
    """``repeat`` — a copy task: a random block of letters written several times per line.

    >>> line = RepeatSource(seed=0).read(200)[0].split(b"\\n")[0].split(b" ")
    >>> len(set(line)) == 1 and len(line) >= 2
    True
    """

    def __init__(self, seed: int = 0) -> None:
        super().__init__("repeat", seed)

    def _chunks(self) -> Iterator[Chunk]:
        rng = _python_rng(self.seed, "repeat")
        letters = "abcdefghijklmnopqrstuvwxyz"
        while True:
            block = "".join(rng.choices(letters, k=rng.randint(8, 48)))
            copies = rng.randint(2, 6)
            yield (" ".join([block] * copies) + "\n").encode("ascii"), True


class CountingSource(GeneratedSource):
    """``counting`` — decimal numbers counting up, one per line, one endless document.

    >>> lines = CountingSource(seed=0).read(64)[0].split(b"\\n")
    >>> int(lines[1]) == int(lines[0]) + 1
    True
    """

    def __init__(self, seed: int = 0) -> None:
        super().__init__("counting", seed)

    def _chunks(self) -> Iterator[Chunk]:
        rng = np.random.default_rng(source_seed(self.seed, "counting"))
        number = int(rng.integers(0, 1_000_000))
        while True:
            text = "".join(f"{i}\n" for i in range(number, number + 4096))
            number += 4096
            yield text.encode("ascii"), False


# ---- the story grammar -------------------------------------------------------------------

_CHARACTERS = [
    ("Lily", "she"), ("Tom", "he"), ("Mia", "she"), ("Ben", "he"),
    ("Sara", "she"), ("Max", "he"), ("Anna", "she"), ("Leo", "he"),
    ("Zoe", "she"), ("Sam", "he"), ("Ella", "she"), ("Jack", "he"),
    ("Nora", "she"), ("Finn", "he"), ("Ruby", "she"), ("Otto", "he"),
]  # fmt: skip
_KINDS = {
    "she": ["girl", "cat", "bird", "bunny", "fox"],
    "he": ["boy", "dog", "bear", "frog", "mouse"],
}
_PRONOUNS = {"she": ("she", "her", "her"), "he": ("he", "him", "his")}
_ADJECTIVES = ["little", "happy", "curious", "brave", "shy", "kind", "sleepy", "clever"]
_PLACES = ["park", "forest", "garden", "beach", "village", "farm", "school", "hill", "river"]
_THINGS = [
    "red ball", "shiny stone", "old map", "small box", "blue kite",
    "toy car", "golden key", "big book", "warm hat", "funny drum",
]  # fmt: skip
_TIMES = ["One day", "One sunny morning", "One rainy afternoon", "After lunch", "That evening"]
_FINDS = ["under a tree", "near the water", "behind a rock", "in the grass", "on the path"]
_GOOD = ["happy", "excited", "proud", "surprised"]
_BAD = ["sad", "scared", "worried", "upset"]
_PLAY = ["played", "laughed", "sang", "ran", "danced"]
_TROUBLES = [
    "But then the {thing} fell into a deep hole.",
    "But then a strong wind took the {thing} away.",
    "But then the {thing} broke into two pieces.",
    "But then {name} could not find the {thing} anywhere.",
]
_FIXES = [
    "{Friend} had an idea and helped {obj} get it back.",
    "{Friend} found a long stick, and together they got the {thing} back.",
    '{Friend} gave {obj} a hug and said, "We can fix it together."',
]
_QUOTES = [
    "Can I play too?",
    "Let us share it!",
    "Be careful, it is very old.",
    "I want to help you.",
    "What a nice {thing}!",
]
_ENDINGS = [
    "In the end, {name} and {friend} became best friends.",
    "From that day on, {name} always shared {pos} toys.",
    "{Name} learned that it is good to be kind.",
    "They went home, tired and happy.",
]


def make_story(rng: random.Random) -> str:
    """One story from the grammar.

    >>> make_story(random.Random(1)).startswith(("Once", "There"))
    True
    """
    (name, gender), (friend, _) = rng.sample(_CHARACTERS, 2)
    subj, obj, pos = _PRONOUNS[gender]
    thing = rng.choice(_THINGS)
    place = rng.choice(_PLACES)
    slots = {"name": name, "friend": friend, "thing": thing, "obj": obj, "pos": pos}
    slots |= {"Name": name, "Friend": friend}

    def fill(template: str) -> str:
        return template.format(**slots)

    adjective, kind = rng.choice(_ADJECTIVES), rng.choice(_KINDS[gender])
    article = "an" if adjective[0] in "aeiou" else "a"
    if rng.random() < 0.5:
        opening = f"Once upon a time, there was {article} {adjective} {kind} named {name}."
    else:
        opening = f"There was once {article} {adjective} {kind} called {name}."
    sentences = [opening, f"{subj.capitalize()} loved to play in the {place}."]
    sentences.append(f"{rng.choice(_TIMES)}, {name} found a {thing} {rng.choice(_FINDS)}.")
    sentences.append(f"{subj.capitalize()} was very {rng.choice(_GOOD)}.")
    sentences.append(f"{name} ran to show the {thing} to {friend}.")
    sentences.append(f'{friend} said, "{fill(rng.choice(_QUOTES))}"')
    if rng.random() < 0.6:
        sentences.append(fill(rng.choice(_TROUBLES)))
        sentences.append(f"{name} felt {rng.choice(_BAD)}.")
        sentences.append(fill(rng.choice(_FIXES)))
    sentences.append(f"They {rng.choice(_PLAY)} in the {place} until the sun went down.")
    sentences.append(fill(rng.choice(_ENDINGS)))
    return " ".join(sentences) + "\n"


class StoriesSource(GeneratedSource):
    """``stories`` — generated short stories, one document each.

    >>> data, starts = StoriesSource(seed=0).read(2000)
    >>> len(starts) > 1 and data.isascii()
    True
    """

    def __init__(self, seed: int = 0) -> None:
        super().__init__("stories", seed)

    def _chunks(self) -> Iterator[Chunk]:
        rng = _python_rng(self.seed, "stories")
        while True:
            yield make_story(rng).encode("ascii"), True


# ---- a made-up language ------------------------------------------------------------------

_LINGUA_ONSETS = ["k", "t", "s", "n", "m", "r", "l", "v", "z", "h", "j", "tš", "kv", "sk", "p"]
_LINGUA_VOWELS = ["a", "e", "i", "o", "u", "ä", "ö", "y", "aa", "ei"]
_LINGUA_CODAS = ["", "", "", "n", "s", "k", "r", "t"]
#: words in the language's vocabulary (drawn once, the same for every stream seed)
LINGUA_WORDS = 3000


def lingua_vocabulary() -> list[str]:
    """The words of the ``lingua`` language, most frequent first.

    A word is one to four consonant-vowel syllables (some closed by a consonant) over an
    inventory unlike English: ``ä``, ``ö`` and ``š`` (two UTF-8 bytes each), doubled vowels,
    no ``c``, ``q``, ``w`` or ``x``. The vocabulary comes from a generator with a fixed seed,
    so every stream seed speaks the same language.

    >>> words = lingua_vocabulary()
    >>> len(words), len(set(words)) == len(words)
    (3000, True)
    """
    rng = random.Random(20240613)
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < LINGUA_WORDS:
        n_syllables = rng.choices([1, 2, 3, 4], weights=[3, 5, 3, 1])[0]
        word = "".join(
            rng.choice(_LINGUA_ONSETS) + rng.choice(_LINGUA_VOWELS) + rng.choice(_LINGUA_CODAS)
            for _ in range(n_syllables)
        )
        if word not in seen:
            seen.add(word)
            words.append(word)
    words.sort(key=len)  # short words are the frequent ones, as in natural languages (Zipf)
    return words


class LinguaSource(GeneratedSource):
    """``lingua`` — text in a made-up language: another language for the learner, offline.

    Words are drawn from :func:`lingua_vocabulary` with Zipf's law (the word of rank ``r``
    has weight ``1 / r``; G. K. Zipf, *Human Behavior and the Principle of Least Effort*,
    1949), sentences of 4-16 words start with a capital and end with ``.``, ``?`` or ``!``,
    with a comma now and then; a paragraph of 2-6 sentences is one document. It stands in for
    a phase in another natural language: the letters, their frequencies and the words all
    change, the shape of sentences does not. Not a natural language: no grammar ties the
    words together, so only word statistics are there to learn.

    >>> text = LinguaSource(seed=0).read(300)[0].decode("utf-8", "ignore")
    >>> text[0].isupper(), " " in text
    (True, True)
    """

    def __init__(self, seed: int = 0) -> None:
        super().__init__("lingua", seed)

    def _chunks(self) -> Iterator[Chunk]:
        rng = _python_rng(self.seed, "lingua")
        words = lingua_vocabulary()
        cum_weights = list(np.cumsum([1.0 / rank for rank in range(1, len(words) + 1)]))
        while True:
            sentences = []
            for _ in range(rng.randint(2, 6)):
                chosen = rng.choices(words, cum_weights=cum_weights, k=rng.randint(4, 16))
                if len(chosen) > 6 and rng.random() < 0.4:
                    chosen[rng.randint(2, len(chosen) - 3)] += ","
                end = rng.choices([".", "?", "!"], weights=[8, 1, 1])[0]
                sentences.append(" ".join(chosen).capitalize() + end)
            yield (" ".join(sentences) + "\n").encode("utf-8"), True
