/* codi convert DIR OUT.gguf [--type f16|f32|q8_0]: a Hugging Face model
 * folder to GGUF, with a progress bar on stderr. */
#include <stdio.h>
#include <string.h>

#include "cli.h"

int cmd_convert(const cli_opts *o) {
    if (!o->positional || !o->positional2) {
        fprintf(stderr, "codi: convert needs a model folder and an output file: codi convert DIR OUT.gguf\n");
        return 2;
    }
    codi_convert_params p = {CODI_CONVERT_F16, cli_bar_update, NULL};
    if (o->out_type) {
        if (!strcmp(o->out_type, "f16")) p.out_type = CODI_CONVERT_F16;
        else if (!strcmp(o->out_type, "f32")) p.out_type = CODI_CONVERT_F32;
        else if (!strcmp(o->out_type, "q8_0")) p.out_type = CODI_CONVERT_Q8_0;
        else {
            fprintf(stderr, "codi: --type expects f16, f32 or q8_0, got '%s'\n", o->out_type);
            return 2;
        }
    }
    cli_bar bar = {"converting", -1};
    p.progress_user = &bar;
    char err[512];
    const double t0 = cli_now();
    if (codi_convert_hf(o->positional, o->positional2, &p, err, sizeof(err))) {
        cli_bar_end(&bar);
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
    cli_bar bar = {"nesting", -1};
    char err[512];
    const double t0 = cli_now();
    if (codi_nest_experts(o->positional, o->positional2, cli_bar_update, &bar, err, sizeof(err))) {
        cli_bar_end(&bar);
        fprintf(stderr, "codi: nest: %s\n", err);
        return 1;
    }
    fprintf(stderr, "wrote %s in %.1f s\n", o->positional2, cli_now() - t0);
    return 0;
}
