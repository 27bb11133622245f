/* Tokenizer built from GGUF metadata: byte-level BPE (tokenizer.ggml.model
 * "gpt2", with the pre-tokenizer named by tokenizer.ggml.pre) and
 * SentencePiece-style BPE ("llama": Llama-2, Gemma). Matches llama.cpp's
 * token ids. */
#ifndef CODI_TOKENIZER_H
#define CODI_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"

typedef struct codi_vocab codi_vocab;

int codi_vocab_load(const codi_gguf *g, codi_vocab **out, char *err,
                    size_t errlen);
void codi_vocab_free(codi_vocab *v);

int32_t codi_vocab_n_tokens(const codi_vocab *v);
int32_t codi_vocab_bos(const codi_vocab *v); /* -1 when none */
int32_t codi_vocab_eos(const codi_vocab *v);
bool codi_vocab_add_bos(const codi_vocab *v);
bool codi_vocab_add_eos(const codi_vocab *v);
/* End of generation: EOS, EOT, <|im_end|>, <end_of_turn>, ... */
bool codi_vocab_is_eog(const codi_vocab *v, int32_t token);
bool codi_vocab_is_control(const codi_vocab *v, int32_t token);

/* Same contract as codi_tokenize in codi.h. */
int32_t codi_vocab_tokenize(const codi_vocab *v, const char *text, size_t len,
                            int32_t *tokens, int32_t n_max, bool add_special,
                            bool parse_special);
/* Same contract as codi_token_to_piece in codi.h. */
int32_t codi_vocab_token_to_piece(const codi_vocab *v, int32_t token,
                                  char *buf, int32_t len, bool special);

#endif
