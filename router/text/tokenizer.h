/* tokenizer: byte-level BPE (the Qwen2/Qwen3 family) loaded from a Hugging Face tokenizer.json.
 *
 * Workers only see token ids; the router turns text into ids with this module and back with
 * detok.h. Encoding reproduces the `tokenizers` library id for id, with its defaults
 * (split_special_tokens=false, add_special_tokens adds nothing for ByteLevel post-processing):
 *
 *   text ──▶ added tokens (leftmost-longest; lstrip/rstrip/single_word as configured)
 *        ──▶ NFC on each stretch between them ──▶ normalized added tokens
 *        ──▶ pre-tokenizer regex (pcre2 JIT, UTF + UCP) ──▶ BPE per piece ──▶ ids
 *
 * Where the libraries' Unicode tables differ (pcre2's are Unicode 14, Oniguruma's 16, the NFC
 * of tokenizers 9.0, utf8proc's 15) the code follows tokenizers: docs/tokenizer.md.
 *
 * BPE works on raw bytes (the byte-level alphabet is undone at load), merging the lowest-rank
 * pair first, leftmost on ties, exactly as tokenizers' Word::merge_all does. A piece that is one
 * vocabulary entry and that BPE would leave whole (checked for every entry at load) skips the
 * merge loop, so the tokenizer needs no cache and stays immutable.
 *
 * Input must be valid UTF-8 (Hugging Face only ever sees Python str): anything else is rejected
 * with SL_ERR_INVALID naming the byte offset, never tokenized byte by byte.
 *
 *   sl_tok *tok; sl_err e = {0};
 *   if (sl_tok_load(&tok, "tests/data/qwen3-tokenizer", &e) != SL_OK) die(e.msg);
 *   sl_tok_ids ids = {0};
 *   if (sl_tok_encode(tok, text, strlen(text), &ids, &e) != SL_OK) reply_400(e.msg);
 *   send(ids.v, ids.n);
 *   int32_t im_end = sl_tok_token_id(tok, "<|im_end|>");
 *   sl_tok_ids_free(&ids);
 *   sl_tok_free(tok);
 *
 * Threads: an sl_tok never changes after sl_tok_load returns. Every function taking a
 * `const sl_tok *` may run on any number of threads at once (the router encodes long prompts in
 * the libuv thread pool); none blocks on another. An sl_tok_ids belongs to one thread at a time.
 */
#ifndef SL_TOKENIZER_H
#define SL_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "sl_err.h"

typedef struct sl_tok sl_tok;

/* A growable array of token ids (caller-owned; zero-initialise, free with sl_tok_ids_free). */
typedef struct sl_tok_ids {
    int32_t *v;
    size_t n;
    size_t cap;
} sl_tok_ids;

/* Appends one id; 0, or -1 when memory runs out (ids is unchanged). */
int sl_tok_ids_push(sl_tok_ids *ids, int32_t id);
void sl_tok_ids_free(sl_tok_ids *ids);

/* Loads path: a tokenizer.json file, or a directory holding one. Fails with SL_ERR_UNSUPPORTED
 * (naming the component) for pipelines other than byte-level BPE with an optional NFC
 * normalizer and a Split-regex and/or ByteLevel pre-tokenizer. Takes ~0.3 s for Qwen3 (11 MB
 * JSON); blocking, call it at start-up. *out is owned by the caller (sl_tok_free). */
sl_status sl_tok_load(sl_tok **out, const char *path, sl_err *e);
void sl_tok_free(sl_tok *t);

/* Appends the ids of text[0..len) to out (existing ids are kept, so a prompt can be built in
 * parts). NUL bytes are ordinary characters. Fails with out as it was before the call:
 * SL_ERR_INVALID for invalid UTF-8, SL_ERR_LIMIT for 2 GiB of text or more, SL_ERR_NOMEM when
 * memory runs out. CPU-bound (~15-30 MB/s on one core): the router runs long texts off its
 * event loop. */
sl_status sl_tok_encode(const sl_tok *t, const char *text, size_t len, sl_tok_ids *out, sl_err *e);

/* Byte ranges [start, end) of a text, in increasing order and disjoint (caller-owned;
 * zero-initialise, free with sl_tok_spans_free). */
typedef struct sl_tok_span {
    size_t start, end;
} sl_tok_span;

typedef struct sl_tok_spans {
    sl_tok_span *v;
    size_t n;
    size_t cap;
} sl_tok_spans;

/* Appends [start, end) after the last range (start >= its end): an empty range is dropped, one
 * that starts where the last ends extends it. 0, or -1 when memory runs out (s unchanged). */
int sl_tok_spans_push(sl_tok_spans *s, size_t start, size_t end);
void sl_tok_spans_free(sl_tok_spans *s);

/* sl_tok_encode, except that inside the ranges of literal (text a client typed: a message, a
 * prompt) added tokens marked special are not matched: their spelling is encoded as the
 * characters it is made of, as tokenizers does with encode_special_tokens=true. A special token
 * is one id only where its whole match lies outside the ranges (template text); added tokens
 * not marked special (<think>, <tool_call> in Qwen3) stay one id everywhere, as in tokenizers.
 * Everything else runs over the whole text as sl_tok_encode does, so a text whose ranges hold
 * no special token's spelling gets exactly sl_tok_encode's ids. One exception: NFC runs
 * separately inside and outside the ranges (a combining mark that opens a range does not
 * compose with the character before it).
 * literal must be ordered, disjoint, inside text and on character boundaries
 * (SL_ERR_INVALID otherwise); NULL or empty is sl_tok_encode. Other errors as sl_tok_encode. */
sl_status sl_tok_encode_literal(const sl_tok *t, const char *text, size_t len,
                                const sl_tok_spans *literal, sl_tok_ids *out, sl_err *e);

/* Diagnostics: the pre-tokenizer's pieces of text[0..len), as the byte offset where each ends,
 * appended to ends. Only the regex split runs (no added tokens, no normalization), so tests can
 * compare piece boundaries with Hugging Face's pre_tokenizer directly. Errors as encode. */
sl_status sl_tok_split(const sl_tok *t, const char *text, size_t len, sl_tok_ids *ends, sl_err *e);

/* One more than the highest id (151669 for Qwen3: the model's embedding rows beyond that are
 * padding and have no text). */
int32_t sl_tok_vocab_size(const sl_tok *t);

/* The id of a token given as spelled in tokenizer.json ("<|im_end|>", "<think>", "Ġthe"),
 * or -1. */
int32_t sl_tok_token_id(const sl_tok *t, const char *token);

/* The tokenizer.json spelling of id (NUL-terminated, owned by t), or NULL for an unknown id. */
const char *sl_tok_token_str(const sl_tok *t, int32_t id);

/* The bytes id decodes to (not NUL-terminated, may be a fragment of a UTF-8 character; owned by
 * t), with their count in *len; NULL for an unknown id. */
const uint8_t *sl_tok_token_bytes(const sl_tok *t, int32_t id, size_t *len);

/* 1 when id is an added token marked "special" (<|im_end|>, <|endoftext|>; not <think>). */
int sl_tok_is_special(const sl_tok *t, int32_t id);

#endif
