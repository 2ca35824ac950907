"""Write the small held-out samples that tests/test_bundled_models.py measures the bundled models on.

    apt-get install wamerican wfrench wngerman wspanish witalian wportuguese wdutch wpolish wswedish
    python tests/data/make_heldout_samples.py

- langid_heldout.tsv: WORDS_PER_LANGUAGE words per language, "word<TAB>label" per line, drawn
  (seeded) from the words tools/train_langid.py never trains on: the Debian word lists it reads
  (same files, same cleaning via its read_words), words found in one list only, crc32(word) % 10
  == 0. Needs the word lists (the packages above; the bundled model was trained on the versions
  recorded in its metadata "training"/"packages").
- char_heldout.txt: the first CHARS characters (cut at a line end) of textwrap.py from the
  installed CPython standard library (PSF license), one of the modules tools/train_char_model.py
  holds out of training (HELD_OUT).

Both files are committed; the tests read them and never need the word lists or this script.
"""
import importlib.util
import os
import random
import sysconfig
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
WORDS_PER_LANGUAGE = 100
CHARS = 6000
CHAR_MODULE = "textwrap"


def tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the tools import torch at the top: a developer machine has it
    return module


def langid_sample():
    langid = tool("train_langid")
    sets = {}
    for code, _, fname, enc, pkg in langid.LANGUAGES:
        path = os.path.join("/usr/share/dict", fname)
        if not os.path.exists(path):
            raise SystemExit(f"{path} is missing: apt-get install {pkg}")
        sets[code] = langid.read_words(path, enc, code)
    count = {}
    for words in sets.values():
        for w in words:
            count[w] = count.get(w, 0) + 1
    rng = random.Random(0)
    rows = []
    for code, *_ in langid.LANGUAGES:
        held = sorted(w for w in sets[code] if count[w] == 1 and zlib.crc32(w.encode()) % 10 == 0)
        rows += [(w, code) for w in rng.sample(held, WORDS_PER_LANGUAGE)]
    with open(os.path.join(HERE, "langid_heldout.tsv"), "w", encoding="utf-8", newline="\n") as f:
        f.writelines(f"{w}\t{code}\n" for w, code in rows)
    return len(rows)


def char_sample():
    chars = tool("train_char_model")
    assert CHAR_MODULE in chars.HELD_OUT
    with open(os.path.join(sysconfig.get_paths()["stdlib"], CHAR_MODULE + ".py"), encoding="utf-8") as f:
        text = f.read()
    text = text[: text.rindex("\n", 0, CHARS) + 1]
    with open(os.path.join(HERE, "char_heldout.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    return len(text)


if __name__ == "__main__":
    print(f"langid_heldout.tsv: {langid_sample()} words; char_heldout.txt: {char_sample()} characters")
