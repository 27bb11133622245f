#!/usr/bin/env bash
# kv_bench.sh - long context in little memory (issue 6): KV cache types,
# token budgets and chunked prefill, measured with the codi CLI.
#
#   bench/kv_bench.sh [--model smollm2|gemma|all] [--quick] [--types-only] [--skip-types]
#                     [--reps N] [--windows-smollm2 N] [--windows-gemma N]
#                     [--out DIR]
#
#   --model     which model(s) (default all): SmolLM2-135M-Instruct Q4_1 at
#               -c 4096, Gemma 3 270M Q4_K_M at -c 8192
#   --quick     1 PPL window per model, 1 timing run, budgets at 25% only
#   --types-only  only the PPL/KL rows of the KV types (no budgets, no
#               decode or prefill sections)
#   --skip-types  no PPL/KL rows of q8/q4 (f16 and budgets only)
#   --reps N    runs per timing, the median is reported (default 3)
#   --windows-* PPL windows (-c tokens each) per model (default 3 and 2)
#   --out DIR   results folder (default bench/results/<UTC date>-kv)
#   CODI=PATH   the codi binary (default build/codi)
#
# For each model:
#   1. ppl (second half of each window scored) and KL against the full f16
#      cache (--kl-base from the f16 run, --kl for the others) for
#      --kv-type f16, q8, q4 (keys per channel, the default), q4 with keys
#      per token (--kv-keys token) with and without smoothing, and
#      --kv-budget 50/25/10%
#      under alisa, window and h2o (f16 cache). All with --ubatch 16, so that
#      each scored token sees (close to) the budgeted cache.
#   2. decode tokens/s at positions 4000..4063 (run -f PROMPT of ~4000
#      tokens, -n 64, --temp 0, -c 4096), median of --reps runs, for each KV
#      type, budgets 50/25/10% (alisa) and window 25%; plus the same decode at
#      position ~16 to estimate what attention over the long cache costs.
#   3. peak RSS (/usr/bin/time -v) of a ~4096-token prompt evaluated with
#      --ubatch 4096 (one pass), 512 (default) and 256.
# Everything timed runs under nice -n -20. Writes DIR/<model>.md (tables),
# DIR/machine.md and DIR/raw/* (every command's output), prints the tables.
# The KL base files (about 0.2 GB per SmolLM2 window, 2.1 GB per Gemma
# window) go to ${TMPDIR:-/tmp} and are deleted at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

MODELS=all QUICK=0 REPS=3 WIN_SMOL=3 WIN_GEMMA=2 OUT="" TYPES_ONLY=0 SKIP_TYPES=0
while (($#)); do
    case $1 in
    --model) MODELS=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --types-only) TYPES_ONLY=1; shift ;;
    --skip-types) SKIP_TYPES=1; shift ;;
    --reps) REPS=$2; shift 2 ;;
    --windows-smollm2) WIN_SMOL=$2; shift 2 ;;
    --windows-gemma) WIN_GEMMA=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "kv_bench.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
case $MODELS in smollm2 | gemma | all) ;; *) echo "kv_bench.sh: --model smollm2|gemma|all" >&2; exit 2 ;; esac
if ((QUICK)); then
    REPS=1 WIN_SMOL=1 WIN_GEMMA=1
    BUDGETS=(25)
else
    BUDGETS=(50 25 10)
fi
((TYPES_ONLY)) && BUDGETS=()

CODI=${CODI:-build/codi}
TEXT=bench/data/licenses.txt
OUT=${OUT:-bench/results/$(date -u +%Y-%m-%d)-kv}
RAW=$OUT/raw
TMP=$(mktemp -d "${TMPDIR:-/tmp}/kv_bench.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$RAW"
[[ -x $CODI ]] || { echo "kv_bench.sh: no codi binary at $CODI" >&2; exit 1; }
[[ -x /usr/bin/time ]] || { echo "kv_bench.sh: needs /usr/bin/time (GNU time)" >&2; exit 1; }
NICE=(nice -n -20)
T0=$(date +%s)

{
    echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), codi $(git rev-parse --short HEAD)"
    echo
    echo "- binary: $CODI (sha256 $(sha256sum "$CODI" | cut -c1-16), built $(date -u -r "$CODI" '+%Y-%m-%d %H:%M UTC'))"
    echo "- working tree: $(git status --porcelain --untracked-files=no | tr '\n' ' ' | sed 's/ *$//;s/^$/clean/')"
    echo "- $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, $(free -g | awk '/^Mem:/{print $2}') GiB RAM"
    echo "- load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- text: $TEXT ($(wc -c <"$TEXT") bytes), reps $REPS, quick $QUICK"
} | tee "$OUT/machine.md"

# ---- helpers ---------------------------------------------------------------

ntok() { "$CODI" tokenize -m "$1" -f "$2" 2>/dev/null | wc -w; }

# make_prompt MODEL N OUTFILE: the longest prefix of $TEXT with <= N tokens
make_prompt() {
    local m=$1 n=$2 out=$3 lo=1 hi mid
    hi=$(wc -c <"$TEXT")
    while ((lo < hi)); do
        mid=$(((lo + hi + 1) / 2))
        head -c "$mid" "$TEXT" >"$TMP/cut.txt"
        if (($(ntok "$m" "$TMP/cut.txt") <= n)); then lo=$mid; else hi=$((mid - 1)); fi
    done
    head -c "$lo" "$TEXT" >"$out"
}

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
minmax() { printf '%s\n' "$@" | sort -g | awk 'NR==1{lo=$1} {hi=$1} END {print lo "-" hi}'; }

# fields of the "memory:" line of a log: KV MiB, slots, kept, evicted, scratch MiB
mem_kv() { sed -n 's/^memory: KV [a-z0-9]* \([0-9.]*\) MiB.*/\1/p' "$1" | tail -1; }
mem_slots() { sed -n 's/^memory: .*(\([0-9]*\) slots.*/\1/p' "$1" | tail -1; }
mem_kept() { sed -n 's/^memory: .*tokens kept \([0-9]*\),.*/\1/p' "$1" | tail -1; }
mem_evicted() { sed -n 's/^memory: .*evicted \([0-9]*\);.*/\1/p' "$1" | tail -1; }
mem_scratch() { sed -n 's/^memory: .*scratch \([0-9.]*\) MiB.*/\1/p' "$1" | tail -1; }
max_rss_mib() { awk -F': ' '/Maximum resident set size/ {printf "%.0f", $2 / 1024}' "$1"; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%+.2f%%", 100 * (a / b - 1)}'; }

# ---- 1. perplexity and KL --------------------------------------------------

# ppl_run MODEL CTX WINDOWS TAG EXTRA... ; log in $RAW/<name>-ppl-TAG.txt
ppl_run() {
    local m=$1 c=$2 w=$3 tag=$4
    shift 4
    local log=$RAW/$NAME-ppl-$tag.txt
    local cmd=("$CODI" ppl -m "$m" -f "$TEXT" -c "$c" --chunks "$w" --ubatch 16 "$@")
    echo "\$ ${cmd[*]}" >"$log"
    if ! "${NICE[@]}" /usr/bin/time -v -o "$TMP/time.txt" "${cmd[@]}" >>"$log" 2>&1; then
        cat "$TMP/time.txt" >>"$log"
        echo "kv_bench.sh: FAILED ($log):" >&2
        tail -5 "$log" >&2
        return 1
    fi
    cat "$TMP/time.txt" >>"$log"
    echo "  ppl $tag: $(grep '^ppl:' "$log" | tail -1) $(grep '^kl mean:' "$log" || true) ($(grep -o 'in [0-9.]* s' "$log" | tail -1))" >&2
}

ppl_row() { # label tag base_ppl
    local log=$RAW/$NAME-ppl-$2.txt p kl p99 top
    p=$(sed -n 's/^ppl: //p' "$log")
    kl=$(sed -n 's/^kl mean: //p' "$log")
    p99=$(sed -n 's/^kl p99: //p' "$log")
    top=$(sed -n 's/^same top: //p' "$log")
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$1" "$(mem_kv "$log")" "$(mem_slots "$log")" \
        "$p" "$(pct "$p" "$3")" "${kl:--}" "${p99:--}" "${top:--}" "$(max_rss_mib "$log")"
}

ppl_section() { # MODEL CTX WINDOWS
    local m=$1 c=$2 w=$3 kl=$TMP/kl-$NAME.bin base
    echo "== $NAME: ppl and KL, -c $c, $w window(s), --ubatch 16" >&2
    ppl_run "$m" "$c" "$w" f16 --kv-type f16 --kl-base "$kl"
    echo "  (KL base file: $(du -m "$kl" | cut -f1) MiB)" >&2
    if ((SKIP_TYPES == 0)); then
        ppl_run "$m" "$c" "$w" q8 --kv-type q8 --kl "$kl"
        ppl_run "$m" "$c" "$w" q4 --kv-type q4 --kl "$kl"
        ppl_run "$m" "$c" "$w" q4-tok --kv-type q4 --kv-keys token --kl "$kl"
        ppl_run "$m" "$c" "$w" q4-tok-nosmooth --kv-type q4 --kv-keys token --kv-smooth off --kl "$kl"
    fi
    local b pol
    for b in "${BUDGETS[@]}"; do
        for pol in alisa window h2o; do
            ppl_run "$m" "$c" "$w" "b$b-$pol" --kv-budget "$b%" --kv-policy "$pol" --kl "$kl"
        done
    done
    rm -f "$kl"
    base=$(sed -n 's/^ppl: //p' "$RAW/$NAME-ppl-f16.txt")
    {
        echo "### $NAME: perplexity and KL vs the full f16 cache (-c $c, $w window(s), $((w * (c / 2 - 1))) scored tokens, --ubatch 16)"
        echo
        echo "| KV cache | KV MiB | slots | PPL | vs f16 | KL mean | KL p99 | same top | peak RSS MiB |"
        echo "| -------- | -----: | ----: | --: | -----: | ------: | -----: | -------: | -----------: |"
        ppl_row "f16 (full)" f16 "$base"
        if ((SKIP_TYPES == 0)); then
            ppl_row "q8" q8 "$base"
            ppl_row "q4, keys per channel (default)" q4 "$base"
            ppl_row "q4, keys per token, smoothing on" q4-tok "$base"
            ppl_row "q4, keys per token, smoothing off" q4-tok-nosmooth "$base"
        fi
        for b in "${BUDGETS[@]}"; do
            for pol in alisa window h2o; do
                ppl_row "f16, budget $b% ($((c * b / 100)) tokens), $pol" "b$b-$pol" "$base"
            done
        done
        echo
    } >>"$OUT/$NAME.md"
}

# ---- 2. decode speed at position 4000+ --------------------------------------

DEC_CTX=4096 DEC_N=64

# dec_run TAG PROMPTFILE EXTRA... : REPS runs; logs $RAW/<name>-decode-TAG-<i>.txt
dec_run() {
    local tag=$1 prompt=$2 i log
    shift 2
    for ((i = 1; i <= REPS; i++)); do
        log=$RAW/$NAME-decode-$tag-$i.txt
        local cmd=("$CODI" run -m "$MODEL" -f "$prompt" -n "$DEC_N" --temp 0 -c "$DEC_CTX" --no-display-prompt "$@")
        echo "\$ ${cmd[*]}" >"$log"
        if ! "${NICE[@]}" "${cmd[@]}" >>"$log" 2>&1; then
            echo "kv_bench.sh: FAILED ($log):" >&2
            tail -5 "$log" >&2
            return 1
        fi
    done
    echo "  decode $tag: $(grep -h '^generation:' "$RAW/$NAME-decode-$tag"-*.txt | sed 's/  */ /g' | tr '\n' ';')" >&2
}

dec_tps() { grep -h '^generation:' "$RAW/$NAME-decode-$1"-*.txt | sed 's/.*, *\([0-9.]*\) tokens\/s.*/\1/'; }

dec_row() { # label tag
    local first=$RAW/$NAME-decode-$2-1.txt tps med ms gen
    mapfile -t tps < <(dec_tps "$2")
    med=$(median "${tps[@]}")
    ms=$(awk -v t="$med" 'BEGIN {printf "%.2f", 1000 / t}')
    gen=$(sed -n 's/^generation: *\([0-9]*\) tokens.*/\1/p' "$first")
    printf '| %s | %s | %s | %s | %s | %s (%s) | %s | %s |\n' "$1" "$(mem_kv "$first")" "$(mem_slots "$first")" \
        "$(mem_kept "$first")" "$gen" "$med" "$(minmax "${tps[@]}")" "$ms" \
        "$(awk -v a="$ms" -v b="$SHORT_MS" 'BEGIN {printf "%.2f", a - b}')"
}

decode_section() {
    local p4000=$TMP/prompt4000-$NAME.txt pshort=$TMP/prompt16-$NAME.txt b
    make_prompt "$MODEL" 4000 "$p4000"
    make_prompt "$MODEL" 16 "$pshort"
    local np
    np=$(ntok "$MODEL" "$p4000")
    echo "== $NAME: decode at position $np.., -c $DEC_CTX, -n $DEC_N, $REPS run(s)" >&2
    dec_run short "$pshort" --kv-type f16
    local tps
    mapfile -t tps < <(dec_tps short)
    SHORT_MS=$(awk -v t="$(median "${tps[@]}")" 'BEGIN {printf "%.2f", 1000 / t}')
    dec_run f16 "$p4000" --kv-type f16
    dec_run q8 "$p4000" --kv-type q8
    dec_run q4 "$p4000" --kv-type q4
    dec_run q4-tok "$p4000" --kv-type q4 --kv-keys token
    for b in "${BUDGETS[@]}"; do
        dec_run "b$b-alisa" "$p4000" --kv-budget "$b%" --kv-policy alisa
    done
    dec_run b25-window "$p4000" --kv-budget 25% --kv-policy window
    {
        echo "### $NAME: decode speed after a $np-token prompt (-c $DEC_CTX, -n $DEC_N, --temp 0, median of $REPS)"
        echo
        echo "KV MiB and slots as the memory line reports them (a budget B holds B + ubatch (512) slots);"
        echo "\"over short\" = ms/token minus ms/token of the same decode after a 16-token prompt"
        echo "($SHORT_MS ms/token, f16), an estimate of what attention over the long cache costs."
        echo
        echo "| KV cache | KV MiB | slots | kept | generated | decode t/s (min-max) | ms/token | over short |"
        echo "| -------- | -----: | ----: | ---: | --------: | -------------------: | -------: | ---------: |"
        dec_row "f16 (full)" f16
        dec_row "q8" q8
        dec_row "q4 (keys per channel)" q4
        dec_row "q4 (keys per token, smoothing on)" q4-tok
        for b in "${BUDGETS[@]}"; do
            dec_row "f16, budget $b% ($((DEC_CTX * b / 100))), alisa" "b$b-alisa"
        done
        dec_row "f16, budget 25% ($((DEC_CTX / 4))), window" b25-window
        echo
    } >>"$OUT/$NAME.md"
}

# ---- 3. prefill peak RSS --------------------------------------------------

rss_run() { # tag prompt extra...
    local tag=$1 prompt=$2 log=$RAW/$NAME-prefill-$1.txt
    shift 2
    local cmd=("$CODI" run -m "$MODEL" -f "$prompt" -n 1 --temp 0 -c 4160 --no-display-prompt "$@")
    echo "\$ ${cmd[*]}" >"$log"
    if ! "${NICE[@]}" /usr/bin/time -v -o "$TMP/time.txt" "${cmd[@]}" >>"$log" 2>&1; then
        cat "$TMP/time.txt" >>"$log"
        echo "kv_bench.sh: FAILED ($log):" >&2
        tail -5 "$log" >&2
        return 1
    fi
    cat "$TMP/time.txt" >>"$log"
    echo "  prefill $tag: $(max_rss_mib "$log") MiB peak RSS" >&2
}

rss_row() { # label tag
    local log=$RAW/$NAME-prefill-$2.txt
    printf '| %s | %s | %s | %s | %s |\n' "$1" "$(max_rss_mib "$log")" "$(mem_kv "$log")" "$(mem_scratch "$log")" \
        "$(sed -n 's/^prompt: .*, *\([0-9.]*\) tokens\/s.*/\1/p' "$log")"
}

prefill_section() {
    local p=$TMP/prompt4096-$NAME.txt np
    make_prompt "$MODEL" 4096 "$p"
    np=$(ntok "$MODEL" "$p")
    echo "== $NAME: prefill of $np tokens, peak RSS" >&2
    rss_run u4096 "$p" --ubatch 4096
    rss_run u512 "$p"
    rss_run u256 "$p" --ubatch 256
    rss_run u256-q4-b25 "$p" --ubatch 256 --kv-type q4 --kv-budget 1024
    {
        echo "### $NAME: prefill of a $np-token prompt (run -n 1 -c 4160), peak RSS (/usr/bin/time -v)"
        echo
        echo "| settings | peak RSS MiB | KV MiB | scratch MiB | prompt t/s |"
        echo "| -------- | -----------: | -----: | ----------: | ---------: |"
        rss_row "--ubatch 4096 (one pass), f16" u4096
        rss_row "--ubatch 512 (default), f16" u512
        rss_row "--ubatch 256, f16" u256
        rss_row "--ubatch 256, q4, --kv-budget 1024" u256-q4-b25
        echo
    } >>"$OUT/$NAME.md"
}

# ---- main -------------------------------------------------------------------

bench_model() { # name file ctx windows
    NAME=$1 MODEL=$2
    [[ -f $MODEL ]] || { echo "kv_bench.sh: $MODEL missing (tools/fetch_models.sh)" >&2; exit 1; }
    local t=$(date +%s)
    echo "## $NAME ($MODEL, $(ntok "$MODEL" "$TEXT") tokens of text)" >"$OUT/$NAME.md"
    echo >>"$OUT/$NAME.md"
    ppl_section "$MODEL" "$3" "$4"
    if ((TYPES_ONLY == 0)); then
        decode_section
        prefill_section
    fi
    echo "($NAME: $(($(date +%s) - t)) s)" >>"$OUT/$NAME.md"
    echo >>"$OUT/$NAME.md"
}

if [[ $MODELS == all || $MODELS == smollm2 ]]; then
    bench_model smollm2 models/SmolLM2-135M-Instruct.Q4_1.gguf 4096 "$WIN_SMOL"
fi
if [[ $MODELS == all || $MODELS == gemma ]]; then
    bench_model gemma3-270m models/gemma-3-270m-q4_k_m.gguf 8192 "$WIN_GEMMA"
fi
{
    echo "- load after: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- wall time: $(($(date +%s) - T0)) s"
} | tee -a "$OUT/machine.md"
cat "$OUT/machine.md"
for f in "$OUT"/smollm2.md "$OUT"/gemma3-270m.md; do
    [[ -f $f ]] && cat "$f"
done
exit 0
