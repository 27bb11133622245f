#!/usr/bin/env python3
"""llama_moe_gen.py - llama.cpp's generation speed on one GGUF file, as the
peer of `codi run` in bench/moe_bigger_than_ram.sh (llama-cpp-python 0.3.36 of
bench/.peer/venv: the llama.cpp library itself, CPU, 2 threads, greedy).

    [LLAMA_REPACK=1] bench/.peer/venv/bin/python bench/llama_moe_gen.py MODEL N_GEN

Prints per-token times and one summary line: load, prompt, generation
tokens/s, peak RSS. Weights are used in place from the mmap (page cache);
llama.cpp's default CPU_REPACK buffer would copy all Q4_0 weights into
anonymous memory, which fails outright for a file larger than RAM.
"""
import sys, time, resource
from llama_cpp import Llama
path, n_gen = sys.argv[1], int(sys.argv[2])
t0 = time.time()
import os
import llama_cpp
# LLAMA_REPACK=1: llama.cpp's defaults (repacked weights), for files that fit.
# Otherwise: llama.cpp's default repacks Q4_0 weights into an anonymous 28 GiB buffer,
# which fails on a 24 GiB machine; without extra buffer types it uses the
# weights in place from the mmap (page cache), as on any big model
_orig = llama_cpp.llama_model_default_params
def _params():
    p = _orig()
    p.use_extra_bufts = False
    return p
if os.environ.get("LLAMA_REPACK") != "1":
    llama_cpp.llama_model_default_params = _params
    import llama_cpp.llama as _ll
    _ll.llama_cpp.llama_model_default_params = _params
llm = Llama(model_path=path, n_ctx=512, n_threads=2, n_batch=512, verbose=False, flash_attn=False)
t_load = time.time() - t0
toks = llm.tokenize(b"The history of the river valley begins with")
t0 = time.time(); llm.eval(toks); t_pp = time.time() - t0
times = []
for i in range(n_gen):
    t0 = time.time()
    tok = llm.sample(temp=0.0)
    llm.eval([tok])
    times.append(time.time() - t0)
    print("token %d: %.2f s" % (i, times[-1]), flush=True)
import statistics
print("load %.1f s, prompt %d tokens %.1f s, generation %d tokens %.1f s = %.3f tokens/s (median per token %.2f s), peak RSS %.0f MiB"
      % (t_load, len(toks), t_pp, n_gen, sum(times), n_gen / sum(times), statistics.median(times), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
