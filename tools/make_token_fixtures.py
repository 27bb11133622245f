#!/usr/bin/env python3
"""Capture llama.cpp's token ids for the tokenizer test corpus.

    bench/.peer/venv/bin/python tools/make_token_fixtures.py [MODEL.gguf ...]

Needs llama-cpp-python (llama.cpp's Python binding; tools/build_peer.sh
builds it into bench/.peer/venv). Without arguments it runs over
models/SmolLM2-135M-Instruct.Q4_1.gguf and models/gemma-3-270m-q4_k_m.gguf.
Each model's vocabulary is loaded with Llama(model_path=..., vocab_only=True)
and every sample of tests/data/tokenizer_corpus.txt is tokenized three
ways, written to tests/fixtures/tokens/<model file name without .gguf>.txt.

Corpus split rule: lines starting with '%%%' separate samples. A sample is
the text between two separator lines, without the newline that ends the
first separator line and without the newline just before the second. Text
before the first separator is a comment. After a separator line that reads
'%%% esc' the sample is written with Python bytes escapes (\\xNN, \\\\) and is
decoded with codecs.escape_decode, so it may hold bytes that are not UTF-8;
otherwise the sample is the UTF-8 text as it stands.

Fixture format (text, one record = three lines):

    # comment lines
    S <sample index> <mode> <input bytes as hex, '-' when empty>
    T <token ids, space separated>
    D <concatenated token_to_piece bytes as hex, '-' when empty>

mode 'p': add_special=1 parse_special=0 (BOS/EOS as the metadata asks)
mode 's': add_special=1 parse_special=1 (special-token text recognised)
mode 'r': add_special=0 parse_special=0
D is llama_token_to_piece(lstrip=0, special=<parse_special>) of each id.
"""

import codecs
import ctypes
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "tests", "data", "tokenizer_corpus.txt")
OUT_DIR = os.path.join(ROOT, "tests", "fixtures", "tokens")
DEFAULT_MODELS = [
    os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    os.path.join(ROOT, "models", "gemma-3-270m-q4_k_m.gguf"),
]
MODES = (("p", True, False), ("s", True, True), ("r", False, False))


def read_corpus(path):
    raw = open(path, "rb").read().decode("utf-8")
    seps = [m for m in re.finditer(r"(?m)^%%%.*$", raw)]
    samples = []
    for a, b in zip(seps, seps[1:]):
        body = raw[a.end() + 1:b.start()]
        if body.endswith("\n"):
            body = body[:-1]
        if a.group(0).strip() == "%%% esc":
            samples.append(codecs.escape_decode(body.encode("utf-8"))[0])
        else:
            samples.append(body.encode("utf-8"))
    return samples


def hexs(b):
    return b.hex() if b else "-"


def piece(llama_cpp, vocab, tok, special):
    buf = ctypes.create_string_buffer(256)
    n = llama_cpp.llama_token_to_piece(vocab, tok, buf, len(buf), 0, special)
    if n < 0:
        buf = ctypes.create_string_buffer(-n)
        n = llama_cpp.llama_token_to_piece(vocab, tok, buf, len(buf), 0,
                                           special)
    return buf.raw[:n]


def main(models):
    import llama_cpp

    samples = read_corpus(CORPUS)
    os.makedirs(OUT_DIR, exist_ok=True)
    for path in models:
        llm = llama_cpp.Llama(model_path=path, vocab_only=True,
                              verbose=False)
        vocab = llm._model.vocab
        name = os.path.basename(path)
        if name.endswith(".gguf"):
            name = name[:-5]
        lines = [
            "# codi token fixtures v1 (tools/make_token_fixtures.py)",
            "# model %s, %d tokens, llama-cpp-python %s" %
            (os.path.basename(path), llm.n_vocab(), llama_cpp.__version__),
            "# corpus tests/data/tokenizer_corpus.txt, %d samples" %
            len(samples),
        ]
        for i, text in enumerate(samples):
            for mode, add_special, parse_special in MODES:
                ids = llm.tokenize(text, add_bos=add_special,
                                   special=parse_special)
                pieces = b"".join(piece(llama_cpp, vocab, t, parse_special)
                                  for t in ids)
                lines.append("S %d %s %s" % (i, mode, hexs(text)))
                lines.append("T " + " ".join(str(t) for t in ids))
                lines.append("D " + hexs(pieces))
        out = os.path.join(OUT_DIR, name + ".txt")
        with open(out, "w") as f:
            f.write("\n".join(lines) + "\n")
        print("%s: %d samples x %d modes -> %s" %
              (name, len(samples), len(MODES), os.path.relpath(out, ROOT)))


if __name__ == "__main__":
    main(sys.argv[1:] or DEFAULT_MODELS)
