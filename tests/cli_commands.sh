#!/usr/bin/env bash
# End-to-end tests of the codi CLI commands (positive behaviour).
#
#   bash tests/cli_commands.sh path/to/codi      (from the repository root)
#
# Uses the default model with -t 2 and small -n / -c so the whole file stays
# well under a minute on two cores. Every command runs under `timeout`.

# shellcheck source=tests/lib_cli.sh
source "$(dirname "$0")/lib_cli.sh" "$@"

M=$MODEL
T=(-t "$THREADS")
PROMPT="The capital of France is"
# CODI_TEST_QUICK=1 (sanitizer builds, see tools/test.sh): fewer tokens.
if [ -n "${CODI_TEST_QUICK:-}" ] && [ "${CODI_TEST_QUICK}" != 0 ]; then
    NG=6 PPL_CTX=64
else
    NG=16 PPL_CTX=128
fi

# expect_ok NAME CMD...: run CMD (stdin /dev/null, timeout 120 s) and require
# exit status 0; on failure records it and returns 1.
expect_ok() {
    local name=$1
    shift
    timeout -k 5 120 "$@" >"$TMP/out" 2>"$TMP/err" </dev/null
    RC=$?
    if [ "$RC" -ne 0 ]; then
        ko "$name" "exit status $RC, expected 0"
        return 1
    fi
    return 0
}

# has NAME FILE ERE...: every extended regexp must match a line of FILE.
has() {
    local name=$1 file=$2 re
    shift 2
    for re in "$@"; do
        if ! grep -Eq -e "$re" "$file"; then
            ko "$name" "no line of $(basename "$file") matches /$re/"
            return 1
        fi
    done
    ok "$name"
}

# ------------------------------------------------------------ help
if expect_ok "codi --help" "$CODI" --help; then
    has "codi --help lists -m -c -t --seed" "$TMP/out" \
        '(^|[ ,])-m([ ,]|$)' '(^|[ ,])-c([ ,]|$)' '(^|[ ,])-t([ ,]|$)' '--seed' '^ *run ' '^ *chat ' \
        '^ *ppl ' '^ *tokenize ' '^ *inspect '
fi
if expect_ok "codi -h" "$CODI" -h; then
    has "codi -h prints the usage" "$TMP/out" '^usage: codi'
fi
for cmd in run chat ppl tokenize; do
    if expect_ok "codi $cmd --help" "$CODI" "$cmd" --help; then
        has "codi $cmd --help lists -m -c -t --seed" "$TMP/out" \
            "^usage: codi $cmd" '(^|[ ,])-m([ ,]|$)' '(^|[ ,])-c([ ,]|$)' \
            '(^|[ ,])-t([ ,]|$)' '--seed'
    fi
done
if expect_ok "codi inspect --help" "$CODI" inspect --help; then
    has "codi inspect --help prints the usage" "$TMP/out" '^usage: codi inspect'
fi
if expect_ok "codi run --help after other options" "$CODI" run -m "$M" -n 3 --help; then
    has "codi run -m X --help prints the usage" "$TMP/out" '^usage: codi run'
fi

# ------------------------------------------------------------ inspect
if expect_ok "codi inspect MODEL" "$CODI" inspect "$M"; then
    has "inspect: tensor count and architecture" "$TMP/out" \
        '^tensors: 272$' '^ *general\.architecture +=  *llama$' '^GGUF version: 3$' \
        'blk\.29\.ffn_down\.weight' 'token_embd\.weight +Q8_0'
    rows=$(grep -Ec '^  [0-9]+ +[a-z_0-9.]+\.weight ' "$TMP/out")
    if [ "$rows" -eq 272 ]; then
        ok "inspect: 272 rows in the tensor table"
    else
        ko "inspect: 272 rows in the tensor table" "found $rows"
    fi
fi
if expect_ok "codi inspect -m MODEL" "$CODI" inspect -m "$M"; then
    has "inspect -m: tensor count" "$TMP/out" '^tensors: 272$'
fi

# ------------------------------------------------------------ tokenize
# "Hello world" -> 19556 905: llama.cpp's ids from
# tests/fixtures/tokens/SmolLM2-135M-Instruct.Q4_1.txt (sample 0, mode 's' =
# add_special + parse_special, which is what `codi tokenize` does; this model
# adds no BOS).
if expect_ok "tokenize -p 'Hello world'" "$CODI" tokenize -m "$M" -p "Hello world"; then
    if [ "$(cat "$TMP/out")" = "19556 905" ]; then
        ok "tokenize 'Hello world' = 19556 905 (llama.cpp)"
    else
        ko "tokenize 'Hello world' = 19556 905 (llama.cpp)" "got '$(cat "$TMP/out")'"
    fi
fi
printf 'Hello world' >"$TMP/hello.txt"
if expect_ok "tokenize -f FILE" "$CODI" tokenize -m "$M" -f "$TMP/hello.txt"; then
    if [ "$(cat "$TMP/out")" = "19556 905" ]; then
        ok "tokenize -f gives the same ids as -p"
    else
        ko "tokenize -f gives the same ids as -p" "got '$(cat "$TMP/out")'"
    fi
fi
# Special-token text is parsed: <|im_start|> is id 1 in SmolLM2's vocabulary.
if expect_ok "tokenize special token" "$CODI" tokenize -m "$M" -p "<|im_start|>"; then
    if [ "$(cat "$TMP/out")" = "1" ]; then
        ok "tokenize '<|im_start|>' = 1"
    else
        ko "tokenize '<|im_start|>' = 1" "got '$(cat "$TMP/out")'"
    fi
fi

# ------------------------------------------------------------ run
if expect_ok "run --temp 0 -n $NG (1)" "$CODI" run -m "$M" -p "$PROMPT" -n "$NG" --temp 0 "${T[@]}"; then
    cp "$TMP/out" "$TMP/greedy1"
    cp "$TMP/err" "$TMP/greedy1.err"
    has "run: stderr has prompt and generation speed" "$TMP/err" \
        '^prompt: .*[0-9.]+ tokens/s' '^generation: .*[0-9.]+ tokens/s'
    if expect_ok "run --temp 0 -n $NG (2)" "$CODI" run -m "$M" -p "$PROMPT" -n "$NG" --temp 0 "${T[@]}"; then
        if cmp -s "$TMP/out" "$TMP/greedy1"; then
            ok "run --temp 0: identical stdout twice"
        else
            ko "run --temp 0: identical stdout twice" "outputs differ: '$(cat "$TMP/greedy1")'"
        fi
    fi
    # Greedy continuation of this prompt (llama.cpp gives " Paris." too).
    if grep -q "^$PROMPT Paris" "$TMP/greedy1"; then
        ok "run --temp 0: '$PROMPT Paris...'"
    else
        ko "run --temp 0: '$PROMPT Paris...'" "got '$(head -c 200 "$TMP/greedy1")'"
    fi
fi

for i in 1 2; do
    if expect_ok "run --seed 1 --temp 0.8 -n 8 ($i)" \
        "$CODI" run -m "$M" -p "$PROMPT" -n 8 --temp 0.8 --seed 1 "${T[@]}"; then
        cp "$TMP/out" "$TMP/seed$i"
    fi
done
if [ -f "$TMP/seed1" ] && [ -f "$TMP/seed2" ]; then
    if cmp -s "$TMP/seed1" "$TMP/seed2"; then
        ok "run --seed 1 --temp 0.8: identical stdout twice"
    else
        ko "run --seed 1 --temp 0.8: identical stdout twice" \
            "'$(cat "$TMP/seed1")' vs '$(cat "$TMP/seed2")'"
    fi
    # run -n 8: stdout begins with the prompt, and something follows it.
    if [ "$(head -c ${#PROMPT} "$TMP/seed1")" = "$PROMPT" ] &&
        [ "$(wc -c <"$TMP/seed1")" -gt $((${#PROMPT} + 1)) ]; then
        ok "run -n 8: stdout begins with the prompt"
    else
        ko "run -n 8: stdout begins with the prompt" "got '$(head -c 200 "$TMP/seed1")'"
    fi
    if grep -Eq '^generation: +8 tokens' "$TMP/err"; then
        ok "run -n 8: 8 tokens generated"
    else
        ko "run -n 8: 8 tokens generated" "$(grep generation "$TMP/err")"
    fi
fi

# -f FILE and --no-display-prompt: the first greedy tokens, without the prompt.
printf '%s' "$PROMPT" >"$TMP/prompt.txt"
if expect_ok "run -f FILE --no-display-prompt -n 3" \
    "$CODI" run -m "$M" -f "$TMP/prompt.txt" -n 3 --temp 0 --no-display-prompt "${T[@]}"; then
    cont=$(cat "$TMP/out")
    if [ -z "$cont" ] || grep -q "$PROMPT" "$TMP/out"; then
        ko "run --no-display-prompt: prompt not echoed" "got '$cont'"
    else
        ok "run --no-display-prompt: prompt not echoed"
        if [ -f "$TMP/greedy1" ] && [[ "$(cat "$TMP/greedy1")" != "$PROMPT$cont"* ]]; then
            ko "run -f FILE continues like run -p TEXT" \
                "'$cont' is not how '$(head -c 200 "$TMP/greedy1")' continues"
        else
            ok "run -f FILE continues like run -p TEXT"
        fi
    fi
fi

# ------------------------------------------------------------ chat
# Two user lines on a pipe (not a terminal: no "> " prompts). Each answer is
# followed by a newline; an answer may itself hold newlines, so the number of
# answers is checked loosely: at least two lines and at least one generated
# token per turn (an answer may end early with the end-of-turn token).
printf '%s\n%s\n' "What is the capital of France?" "And of Germany?" >"$TMP/chat.in"
timeout -k 5 120 "$CODI" chat -m "$M" -n "$NG" --temp 0 "${T[@]}" <"$TMP/chat.in" >"$TMP/out" 2>"$TMP/err"
RC=$?
if [ "$RC" -ne 0 ]; then
    ko "chat: two lines on stdin" "exit status $RC"
else
    ok "chat: two lines on stdin, exit 0"
    ngen=$(sed -n 's/^generation: *\([0-9]*\) tokens.*/\1/p' "$TMP/err")
    nl=$(wc -l <"$TMP/out")
    if [ -z "$(tr -d ' \n' <"$TMP/out")" ]; then
        ko "chat: two answers" "nothing on stdout"
    elif [ "${ngen:-0}" -lt 2 ] || [ "$nl" -lt 2 ]; then
        ko "chat: two answers" "$ngen tokens generated, $nl lines"
    elif [ "$(tail -c 1 "$TMP/out" | od -An -c | tr -d ' ')" != '\n' ]; then
        ko "chat: two answers" "stdout does not end with a newline"
    else
        ok "chat: two answers ($ngen tokens): $(tr '\n' '|' <"$TMP/out" | head -c 120)"
    fi
    has "chat: stderr has speed lines" "$TMP/err" '^prompt: .*tokens/s' '^generation: .*tokens/s'
    if grep -q 'im_start\|im_end' "$TMP/out"; then
        ko "chat: no template tokens in the answers" "$(head -c 300 "$TMP/out")"
    else
        ok "chat: no template tokens in the answers"
    fi
fi

# ------------------------------------------------------------ ppl
if expect_ok "ppl -c $PPL_CTX --chunks 2" \
    "$CODI" ppl -m "$M" -f tests/data/eval.txt -c "$PPL_CTX" --chunks 2 "${T[@]}"; then
    last=$(tail -n 1 "$TMP/out")
    if [[ $last =~ ^ppl:\ [0-9.]+$ ]]; then
        ok "ppl: last line '$last'"
        # a sane value for this model on English text
        if awk -v v="${last#ppl: }" 'BEGIN { exit !(v > 1 && v < 1000) }'; then
            ok "ppl: value in (1, 1000)"
        else
            ko "ppl: value in (1, 1000)" "$last"
        fi
    else
        ko "ppl: last line matches ^ppl: [0-9.]+\$" "got '$last'"
    fi
fi

# --kl-base then --kl with the same model: KL ~ 0, same top token 100 %.
KLARGS=(-m "$M" -f tests/data/eval.txt -c 16 --chunks 2 "${T[@]}")
if expect_ok "ppl --kl-base" "$CODI" ppl "${KLARGS[@]}" --kl-base "$TMP/base.kl"; then
    base_ppl=$(tail -n 1 "$TMP/out")
    if expect_ok "ppl --kl (same model)" "$CODI" ppl "${KLARGS[@]}" --kl "$TMP/base.kl"; then
        kl=$(sed -n 's/^kl mean: \([0-9.eE+-]*\)$/\1/p' "$TMP/out")
        p99=$(sed -n 's/^kl p99: \([0-9.eE+-]*\)$/\1/p' "$TMP/out")
        top=$(sed -n 's/^same top: \([0-9.]*\)%$/\1/p' "$TMP/out")
        # |mean| rather than mean >= 0: the base distributions are stored as
        # 16-bit quantized log-probs, so the same model can give a mean a few
        # 1e-6 below zero.
        if [ -n "$kl" ] && awk -v v="$kl" 'BEGIN { exit !(v > -1e-3 && v < 1e-3) }'; then
            ok "ppl --kl: |kl mean| = |$kl| < 1e-3"
        else
            ko "ppl --kl: |kl mean| < 1e-3" "kl mean '$kl'"
        fi
        if [ -n "$p99" ] && awk -v v="$p99" 'BEGIN { exit !(v >= 0 && v < 1e-2) }'; then
            ok "ppl --kl: kl p99 $p99 < 1e-2"
        else
            ko "ppl --kl: kl p99 < 1e-2" "kl p99 '$p99'"
        fi
        if [ "$top" = "100.00" ]; then
            ok "ppl --kl: same top 100%"
        else
            ko "ppl --kl: same top 100%" "same top '$top'"
        fi
        if [ "$(tail -n 1 "$TMP/out")" = "$base_ppl" ]; then
            ok "ppl --kl: same ppl as the --kl-base run ($base_ppl)"
        else
            ko "ppl --kl: same ppl as the --kl-base run" "'$(tail -n 1 "$TMP/out")' vs '$base_ppl'"
        fi
    fi
fi

# ------------------------------------------------------------ Ctrl-C
# SIGINT 2 s into a long generation must stop codi within a few seconds with
# a clean status: 0 (codi's choice: it stops generating, prints the speed
# lines and "codi: interrupted") or 130 (killed by the default SIGINT
# action, e.g. when the signal arrives before codi installs its handler).
# env --default-signal=INT undoes the SIG_IGN that bash gives to background
# jobs, so codi sees SIGINT as it would from a terminal.
# The prompt is a count so that greedy decoding does not stop by itself.
COUNT="1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"
env --default-signal=INT "$CODI" run -m "$M" -p "$COUNT" -n 100000 -c 4096 --temp 0 "${T[@]}" \
    >"$TMP/out" 2>"$TMP/err" </dev/null &
PID=$!
BG_PIDS="$BG_PIDS $PID"
sleep 2
T0=$SECONDS
if ! kill -INT "$PID" 2>/dev/null; then
    wait "$PID"
    ko "Ctrl-C stops run" "codi had already exited (status $?) before SIGINT"
else
    for _ in $(seq 1 100); do
        kill -0 "$PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$PID" 2>/dev/null; then
        kill -KILL "$PID" 2>/dev/null
        wait "$PID" 2>/dev/null
        ko "Ctrl-C stops run" "still running 10 s after SIGINT"
    else
        wait "$PID"
        RC=$?
        if [ "$RC" -eq 0 ] || [ "$RC" -eq 130 ]; then
            ok "Ctrl-C stops run (exit $RC after $((SECONDS - T0)) s)"
            if [ "$RC" -eq 0 ]; then
                has "Ctrl-C: stats and 'codi: interrupted' on stderr" "$TMP/err" \
                    '^codi: interrupted' '^generation: .*tokens/s'
                if [ "$(head -c ${#COUNT} "$TMP/out")" = "$COUNT" ]; then
                    ok "Ctrl-C: stdout keeps the prompt and the text so far"
                else
                    ko "Ctrl-C: stdout keeps the prompt and the text so far" \
                        "got '$(head -c 200 "$TMP/out")'"
                fi
            fi
        else
            ko "Ctrl-C stops run" "exit status $RC (0 or 130 expected)"
        fi
    fi
fi

# ------------------------------------------------------------ bench
if expect_ok "codi bench -p 16,32 -n 4 -r 2" "$CODI" bench -m "$M" -p 16,32 -n 4 -r 2 "${T[@]}"; then
    has "bench: a markdown row per test" "$TMP/out" \
        '^\| model \| type ' '\| Q4_1 \| .*\| pp16 \| [0-9.]+ \|' '\| pp32 \| [0-9.]+ \|' '\| tg4 \| [0-9.]+ \|'
fi
if expect_ok "codi bench --json" "$CODI" bench -m "$M" -p 16 -n 4 -r 2 --json "${T[@]}"; then
    if python3 -c '
import json, sys
a = json.load(open(sys.argv[1]))
assert [o["test"] for o in a] == ["pp16", "tg4"], a
for o in a:
    assert o["type"] == "Q4_1" and o["runs"] == 2 and o["tokens_per_s"] > 0 and o["stdev"] >= 0, o
    assert set(o) == {"model", "type", "threads", "test", "tokens_per_s", "stdev", "runs"}, o
' "$TMP/out" 2>"$TMP/py"; then
        ok "bench --json: one object per test with the documented keys"
    else
        ko "bench --json: one object per test with the documented keys" "$(tail -1 "$TMP/py")"
    fi
fi

finish
