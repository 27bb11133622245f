/* codi quantize IN.gguf OUT.gguf --type TYPE [--group G] [--calib FILE]:
 * progress bar on stderr; the output is written under a temporary name in
 * OUT's folder and renamed onto OUT only when complete, so a failed or
 * interrupted run (SIGINT, SIGTERM, SIGHUP) never leaves a half-written
 * OUT behind (the temporary file is removed too). */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "quant/calib.h"
#include "quant/quantize.h"

static char g_tmp[4096]; /* the temporary output, removed on a signal */

static void on_signal(int sig) {
    if (g_tmp[0])
        unlink(g_tmp); /* async-signal-safe */
    signal(sig, SIG_DFL);
    raise(sig);
}

int cmd_quantize(const cli_opts *o) {
    if (!o->positional || !o->positional2) {
        fprintf(stderr, "codi: quantize needs an input and an output file: codi quantize IN.gguf OUT.gguf --type TYPE\n");
        return 2;
    }
    if (!o->out_type) {
        fprintf(stderr, "codi: quantize needs --type (q4g, q8g, gqsa, mix, w4a8, f16 or f32)\n");
        return 2;
    }
    codi_quant_params p = {0};
    p.kind = codi_quant_kind_from_name(o->out_type);
    if (p.kind < 0) {
        fprintf(stderr, "codi: unknown quantization type '%s' (expected q4g, q8g, gqsa, mix, w4a8, f16 or f32)\n", o->out_type);
        return 2;
    }
    p.group = o->q_group ? o->q_group : 32;
    if (o->q_bits > 0.0f && p.kind != CODI_QUANT_MIX) {
        fprintf(stderr, "codi: --bits applies to --type mix only\n");
        return 2;
    }
    p.bits = o->q_bits > 0.0f ? o->q_bits : 4.4f;
    if (p.kind == CODI_QUANT_MIX && !o->calib) {
        fprintf(stderr, "codi: --type mix needs --calib TEXTFILE (its salience comes from activation statistics)\n");
        return 2;
    }
    if (o->q_sparsity >= 0.0f && p.kind != CODI_QUANT_GQSA) {
        fprintf(stderr, "codi: --sparsity applies to --type gqsa only\n");
        return 2;
    }
    p.sparsity = p.kind == CODI_QUANT_GQSA ? (o->q_sparsity >= 0.0f ? o->q_sparsity : 0.5f) : 0.0f;
    if (!strcmp(o->positional, o->positional2)) {
        fprintf(stderr, "codi: quantize: the output must not be the input file\n");
        return 2;
    }
    char err[512];
    codi_calib *cal = NULL;
    if (o->calib) {
        size_t len = 0;
        if (access(o->calib, R_OK) != 0) {
            fprintf(stderr, "codi: --calib: cannot read calibration file '%s': %s\n", o->calib, strerror(errno));
            return 1;
        }
        char *text = cli_read_file(o->calib, &len);
        if (!text)
            return 1; /* cli_read_file said why */
        if (len == 0) {
            free(text);
            fprintf(stderr, "codi: --calib: calibration file '%s' is empty\n", o->calib);
            return 1;
        }
        const double t0 = cli_now();
        const int rc = codi_calib_run(o->positional, text, len, o->n_threads, 0, &cal, err, sizeof(err));
        free(text);
        if (rc) {
            fprintf(stderr, "codi: calibration: %s\n", err);
            return 1;
        }
        fprintf(stderr, "calibration: %d tokens in %.1f s\n", codi_calib_tokens(cal), cli_now() - t0);
        p.imp = codi_calib_importance;
        p.imp_user = cal;
    }
    int n = snprintf(g_tmp, sizeof(g_tmp), "%s.tmp-%ld", o->positional2, (long)getpid());
    if (n < 0 || (size_t)n >= sizeof(g_tmp)) {
        codi_calib_free(cal);
        fprintf(stderr, "codi: quantize: output path too long\n");
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    cli_bar bar = {"quantizing", -1};
    p.progress = cli_bar_update;
    p.progress_user = &bar;
    const double t0 = cli_now();
    double bpw = 0.0;
    codi_mix_report mix = {0};
    if (p.kind == CODI_QUANT_MIX)
        fprintf(stderr, "mix: ranking output features (salience of 8 -> 4 bits)...\n");
    int rc = codi_quantize_file_ex(o->positional, g_tmp, &p, &bpw, &mix, err, sizeof(err));
    codi_calib_free(cal);
    if (!rc && rename(g_tmp, o->positional2) != 0) {
        const int e = errno;
        unlink(g_tmp);
        g_tmp[0] = '\0';
        fprintf(stderr, "codi: quantize: cannot rename the temporary file to '%s': %s\n", o->positional2,
                strerror(e));
        return 1;
    }
    if (rc) {
        unlink(g_tmp);
        g_tmp[0] = '\0';
        cli_bar_end(&bar);
        fprintf(stderr, "codi: quantize: %s\n", err);
        return 1;
    }
    g_tmp[0] = '\0';
    if (p.kind == CODI_QUANT_MIX)
        fprintf(stderr, "mix: %lld of %lld output features at 8 bits; %.3f bits per weight over the block matrices "
                        "(target %.3f, all-4-bit floor %.3f)\n",
                (long long)mix.rows_hi, (long long)mix.rows, mix.bits, (double)p.bits, mix.floor_bits);
    fprintf(stderr, "wrote %s (%s, group %d%s, %.3f bits per weight) in %.1f s\n", o->positional2,
            codi_quant_kind_name(p.kind), p.group, p.kind == CODI_QUANT_GQSA ? ", sparse" : "", bpw,
            cli_now() - t0);
    return 0;
}
