/* codi convert DIR OUT.gguf [--type f16|f32|q8_0]: a Hugging Face model
 * folder to GGUF, with a progress bar on stderr. */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static const char *bar_label = "converting";

static void bar(void *user, uint64_t done, uint64_t total) {
    int *last = user;
    const int pct = total ? (int)(done * 100 / total) : 100;
    if (pct == *last)
        return;
    *last = pct;
    char b[41];
    const int fill = pct * 40 / 100;
    for (int i = 0; i < 40; i++)
        b[i] = i < fill ? '#' : '.';
    b[40] = '\0';
    fprintf(stderr, "\r%s [%s] %3d%%  %.1f / %.1f MB", bar_label, b, pct, (double)done / 1e6, (double)total / 1e6);
    if (done == total)
        fprintf(stderr, "\n");
    fflush(stderr);
}

int cmd_convert(const cli_opts *o) {
    if (!o->positional || !o->positional2) {
        fprintf(stderr, "codi: convert needs a model folder and an output file: codi convert DIR OUT.gguf\n");
        return 2;
    }
    codi_convert_params p = {CODI_CONVERT_F16, bar, NULL};
    if (o->out_type) {
        if (!strcmp(o->out_type, "f16")) p.out_type = CODI_CONVERT_F16;
        else if (!strcmp(o->out_type, "f32")) p.out_type = CODI_CONVERT_F32;
        else if (!strcmp(o->out_type, "q8_0")) p.out_type = CODI_CONVERT_Q8_0;
        else {
            fprintf(stderr, "codi: --type expects f16, f32 or q8_0, got '%s'\n", o->out_type);
            return 2;
        }
    }
    int last = -1;
    p.progress_user = &last;
    char err[512];
    const double t0 = cli_now();
    if (codi_convert_hf(o->positional, o->positional2, &p, err, sizeof(err))) {
        if (last >= 0 && last < 100)
            fprintf(stderr, "\n");
        fprintf(stderr, "codi: convert: %s\n", err);
        return 1;
    }
    fprintf(stderr, "wrote %s in %.1f s\n", o->positional2, cli_now() - t0);
    return 0;
}

/* codi nest IN.gguf OUT.gguf: bit-nested experts (src/moe/nest.c). */
int cmd_nest(const cli_opts *o) {
    if (!o->positional || !o->positional2) {
        fprintf(stderr, "codi: nest needs an MoE model and an output file: codi nest IN.gguf OUT.gguf\n");
        return 2;
    }
    int last = -1;
    char err[512];
    const double t0 = cli_now();
    bar_label = "nesting";
    if (codi_nest_experts(o->positional, o->positional2, bar, &last, err, sizeof(err))) {
        if (last >= 0 && last < 100)
            fprintf(stderr, "\n");
        fprintf(stderr, "codi: nest: %s\n", err);
        return 1;
    }
    fprintf(stderr, "wrote %s in %.1f s\n", o->positional2, cli_now() - t0);
    return 0;
}
