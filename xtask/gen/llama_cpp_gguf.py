"""Converts the tiny Hugging Face fixtures to GGUF with llama.cpp's own converter, so the GGUF
loaders are checked against files real users have. A developer tool; its output is committed under
tests/fixtures/gguf.

    python3 xtask/gen/llama_cpp_gguf.py LLAMA_CPP_DIR OUT_DIR CASE...

LLAMA_CPP_DIR holds llama.cpp's `convert_hf_to_gguf.py` and `gguf-py` (for example the
`vendor/llama.cpp` folder of the llama-cpp-python source distribution). The Python running this needs
torch, transformers and numpy. Two adjustments make the tiny fixtures convertible: their private
512-token tokenizer is declared GPT-2 style (its pre-tokenizer hash is unknown to llama.cpp), and
the raw config.json keys are kept next to the ones transformers 5 renames (GPT-2's `n_ctx`,
GPT-NeoX's `rotary_pct`).
"""

import json
import os
import shutil
import sys
import tempfile


def main():
    llama_cpp, out, cases = sys.argv[1], sys.argv[2], sys.argv[3:]
    sys.path.insert(0, os.path.join(llama_cpp, "gguf-py"))
    sys.path.insert(0, llama_cpp)
    import convert_hf_to_gguf as conv

    conv.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
    load = conv.ModelBase.load_hparams

    def load_hparams(dir_model, *a, **k):
        h = load(dir_model, *a, **k)
        with open(os.path.join(dir_model, "config.json")) as f:
            for key, v in json.load(f).items():
                h.setdefault(key, v)
        return h

    conv.ModelBase.load_hparams = staticmethod(load_hparams)
    here = os.path.dirname(os.path.abspath(__file__))
    fixtures = os.path.join(here, "..", "..", "tests", "fixtures", "tiny")
    os.makedirs(out, exist_ok=True)
    for case in cases:
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, case)
            shutil.copytree(os.path.join(fixtures, case), src)
            cfg_path = os.path.join(src, "config.json")
            with open(cfg_path) as f:
                cfg = json.load(f)
            if "n_positions" in cfg:
                cfg.setdefault("n_ctx", cfg["n_positions"])
            with open(cfg_path, "w") as f:
                json.dump(cfg, f)
            # A plain fast tokenizer: no special tokens added beyond the vocabulary.
            with open(os.path.join(src, "tokenizer_config.json"), "w") as f:
                json.dump({"tokenizer_class": "PreTrainedTokenizerFast"}, f)
            sys.argv = ["convert_hf_to_gguf.py", src, "--outfile", os.path.join(out, f"{case}.gguf"), "--outtype", "f32"]
            conv.main()


if __name__ == "__main__":
    main()
