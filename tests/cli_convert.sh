#!/usr/bin/env bash
# `codi convert` from the command line: a tiny Hugging Face folder
# (tests/fixtures/hf/, tools/make_hf_fixtures.py) to GGUF with each --type,
# the progress bar, running the result, Gemma 3 through run/ppl/bench, and
# bad arguments (exit 2) / bad folders (exit 1) with one error line.
#
#   bash tests/cli_convert.sh path/to/codi      (from the repository root)

# shellcheck source=tests/lib_cli.sh
source "$(dirname "$0")/lib_cli.sh" "$@"

HFDIR=tests/fixtures/hf
for t in f32 f16 q8_0; do
    run_capture timeout 60 "$CODI" convert "$HFDIR/llama-tiny" "$TMP/llama-$t.gguf" --type "$t"
    if [ "$RC" = 0 ] && [ -s "$TMP/llama-$t.gguf" ] && grep -q "converting \[#*\] 100%" "$TMP/err" && grep -q "^wrote " "$TMP/err"; then
        ok "convert --type $t"
    else
        ko "convert --type $t" "rc=$RC: $(tail -c 300 "$TMP/err")"
    fi
done
run_capture timeout 60 "$CODI" convert "$HFDIR/qwen2-tiny" "$TMP/qwen2.gguf"
[ "$RC" = 0 ] && ok "convert (default f16)" || ko "convert (default f16)" "rc=$RC: $(cat "$TMP/err")"
run_capture timeout 60 "$CODI" run -m "$TMP/qwen2.gguf" -p "the cat" -n 4 --temp 0 -t "$THREADS"
[ "$RC" = 0 ] && ok "run the converted model" || ko "run the converted model" "rc=$RC: $(cat "$TMP/err")"
run_capture timeout 60 "$CODI" inspect "$TMP/qwen2.gguf"
if [ "$RC" = 0 ] && grep -q "general.architecture *= qwen2" "$TMP/out" && grep -q "tokenizer.ggml.pre *= qwen2" "$TMP/out"; then
    ok "inspect the converted model"
else
    ko "inspect the converted model" "$(head -5 "$TMP/out")"
fi

# bad use
run_capture "$CODI" convert "$HFDIR/qwen2-tiny"
[ "$RC" = 2 ] && grep -q "needs a model folder and an output file" "$TMP/err" && ok "convert without OUT" || ko "convert without OUT" "rc=$RC $(cat "$TMP/err")"
run_capture "$CODI" convert "$HFDIR/qwen2-tiny" "$TMP/x.gguf" --type q4_0
[ "$RC" = 2 ] && grep -q "expects f16, f32 or q8_0" "$TMP/err" && ok "convert --type q4_0" || ko "convert --type q4_0" "rc=$RC $(cat "$TMP/err")"
run_capture "$CODI" convert "$TMP/nothing-here" "$TMP/x.gguf"
if [ "$RC" = 1 ] && [ "$(wc -l < "$TMP/err")" = 1 ] && grep -q "has no config.json" "$TMP/err" && [ ! -e "$TMP/x.gguf" ]; then
    ok "convert a missing folder"
else
    ko "convert a missing folder" "rc=$RC $(cat "$TMP/err")"
fi

# Gemma 3 through the commands (when the model was fetched)
G=models/gemma-3-270m-q4_k_m.gguf
if [ -f "$G" ]; then
    run_capture timeout 120 "$CODI" run -m "$G" -p "The capital of France is" -n 8 --temp 0 -t "$THREADS"
    [ "$RC" = 0 ] && grep -q "Paris\|capital" "$TMP/out" && ok "gemma3 run" || ko "gemma3 run" "rc=$RC $(cat "$TMP/out" "$TMP/err")"
    run_capture timeout 300 "$CODI" ppl -m "$G" -f tests/data/eval.txt -c 128 --chunks 1 -t "$THREADS"
    [ "$RC" = 0 ] && grep -q "^ppl: " "$TMP/out" && ok "gemma3 ppl" || ko "gemma3 ppl" "rc=$RC $(tail -3 "$TMP/err")"
    run_capture timeout 300 "$CODI" bench -m "$G" --n-prompt 16 -n 4 -r 1 -t "$THREADS"
    [ "$RC" = 0 ] && ok "gemma3 bench" || ko "gemma3 bench" "rc=$RC $(tail -3 "$TMP/err")"
else
    ko "gemma3 commands" "missing $G (run tools/fetch_models.sh)"
fi
finish
