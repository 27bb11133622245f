/* codi moefy IN.gguf OUT.gguf --experts E --top-k K [--calib FILE]
 * [--eval FILE] [--router layer|decoupled] [--type keep|q8_0|f16|f32]:
 * a dense llama model refactored into a mixture of experts (Read-ME).
 * Progress and the router accuracy table go to stderr. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static void line(void *user, const char *msg) {
    (void)user;
    fprintf(stderr, "moefy: %s\n", msg);
}

int cmd_moefy(const cli_opts *o) {
    if (!o->positional || !o->positional2) {
        fprintf(stderr, "codi: moefy needs an input and an output file: codi moefy IN.gguf OUT.gguf --experts E --top-k K\n");
        return 2;
    }
    if (o->mf_experts <= 0 || o->mf_top_k <= 0) {
        if (o->mf_experts <= 0)
            fprintf(stderr, "codi: moefy needs --experts E (at least 2)\n");
        else
            fprintf(stderr, "codi: moefy needs --top-k K (between 1 and E)\n");
        return 2;
    }
    if (o->mf_experts < 2 || o->mf_experts > 256) {
        fprintf(stderr, "codi: --experts must be between 2 and 256, got %d\n", o->mf_experts);
        return 2;
    }
    if (o->mf_top_k > o->mf_experts) {
        fprintf(stderr, "codi: --top-k must be between 1 and the %d experts, got %d\n", o->mf_experts, o->mf_top_k);
        return 2;
    }
    codi_moefy_params p = codi_moefy_default_params();
    p.n_expert = o->mf_experts;
    p.n_expert_used = o->mf_top_k;
    p.n_threads = o->n_threads;
    p.max_tokens = o->mf_max_tokens;
    p.n_shared = o->mf_shared;
    p.active_frac = o->mf_active;
    p.progress = line;
    if (o->mf_router) {
        if (!strcmp(o->mf_router, "layer"))
            p.router = CODI_MOEFY_ROUTER_LAYER;
        else if (!strcmp(o->mf_router, "decoupled"))
            p.router = CODI_MOEFY_ROUTER_DECOUPLED;
        else {
            fprintf(stderr, "codi: --router expects layer or decoupled, got '%s'\n", o->mf_router);
            return 2;
        }
    }
    if (o->out_type) {
        if (!strcmp(o->out_type, "keep")) p.expert_type = -1;
        else if (!strcmp(o->out_type, "q8_0")) p.expert_type = 8;
        else if (!strcmp(o->out_type, "f16")) p.expert_type = 1;
        else if (!strcmp(o->out_type, "f32")) p.expert_type = 0;
        else {
            fprintf(stderr, "codi: --type expects keep, q8_0, f16 or f32, got '%s'\n", o->out_type);
            return 2;
        }
    }
    char *calib = NULL, *eval = NULL;
    size_t clen = 0, elen = 0;
    if (o->mf_calib) {
        if (!(calib = cli_read_file(o->mf_calib, &clen)))
            return 1;
        if (clen == 0) {
            fprintf(stderr, "codi: the calibration file '%s' is empty\n", o->mf_calib);
            free(calib);
            return 1;
        }
        p.calib_text = calib;
        p.calib_len = clen;
    }
    if (o->mf_eval) {
        if (!(eval = cli_read_file(o->mf_eval, &elen))) {
            free(calib);
            return 1;
        }
        p.eval_text = eval;
        p.eval_len = elen;
    }
    char err[512];
    codi_moefy_layer_stats st[512];
    memset(st, 0, sizeof(st));
    /* the layer count sizes the accuracy table */
    codi_model *m = NULL;
    int32_t n_layer = 0;
    if (codi_model_load(o->positional, NULL, &m, err, sizeof(err)) == 0) {
        n_layer = codi_model_n_layer(m);
        codi_model_free(m);
    }
    if (n_layer > 0 && n_layer <= 512)
        p.stats = st;
    const double t0 = cli_now();
    int rc = codi_moefy(o->positional, o->positional2, &p, err, sizeof(err));
    free(calib), free(eval);
    if (rc) {
        fprintf(stderr, "codi: moefy: %s\n", err);
        return 1;
    }
    if (p.stats) {
        fprintf(stderr, "router accuracy (top-%d overlap with the oracle top-%d; score mass kept):\n",
                p.n_expert_used, p.n_expert_used);
        fprintf(stderr, "layer  layer-router  decoupled  dec-vs-layer  mass(layer)  mass(dec)  mass(oracle)\n");
        double a[7] = {0};
        for (int l = 0; l < n_layer; l++) {
            const codi_moefy_layer_stats *s = &st[l];
            fprintf(stderr, "%5d  %12.3f  %9.3f  %12.3f  %11.3f  %9.3f  %12.3f\n", l, s->match_layer,
                    s->match_decoupled, s->dec_vs_layer, s->mass_layer, s->mass_decoupled, s->mass_oracle);
            a[0] += s->match_layer, a[1] += s->match_decoupled, a[2] += s->dec_vs_layer;
            a[3] += s->mass_layer, a[4] += s->mass_decoupled, a[5] += s->mass_oracle;
        }
        fprintf(stderr, " mean  %12.3f  %9.3f  %12.3f  %11.3f  %9.3f  %12.3f\n", a[0] / n_layer, a[1] / n_layer,
                a[2] / n_layer, a[3] / n_layer, a[4] / n_layer, a[5] / n_layer);
    }
    fprintf(stderr, "wrote %s in %.1f s\n", o->positional2, cli_now() - t0);
    return 0;
}
