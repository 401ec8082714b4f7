/* sl_hub: `--model-path ORG/NAME`, a model on the Hugging Face Hub.
 *
 * A model id becomes a directory of the Hugging Face cache, in the layout
 * huggingface_hub writes and reads, so sluice and Python tools share one copy:
 *
 *   $HF_HUB_CACHE (else $HF_HOME/hub, else ~/.cache/huggingface/hub)
 *     models--ORG--NAME/refs/REV               the commit branch or tag REV named
 *     models--ORG--NAME/blobs/ID               a file's bytes (ID: git blob id, or LFS sha256)
 *     models--ORG--NAME/blobs/ID.incomplete    a download in progress, resumed with HTTP Range
 *     models--ORG--NAME/snapshots/COMMIT/FILE  -> ../../blobs/ID
 *     .locks/models--ORG--NAME/ID.lock         flock(2)ed while a process downloads ID
 *                                              (the lock huggingface_hub takes too)
 *
 * A cached snapshot that holds what the caller reads is used with no network
 * access at all. Otherwise, unless $HF_HUB_OFFLINE is set, the files are
 * downloaded: GET $HF_ENDPOINT/api/models/ORG/NAME/revision/REV?blobs=true names
 * the commit and lists the files with their blob ids and sizes; each file a
 * server reads comes from $HF_ENDPOINT/ORG/NAME/resolve/COMMIT/FILE, redirects
 * followed, with `Authorization: Bearer TOKEN` when a token is set ($HF_TOKEN,
 * $HUGGING_FACE_HUB_TOKEN, or the file `huggingface-cli login` writes). libcurl
 * strips that header when a redirect leaves the endpoint's host (the CDN).
 * Progress goes to the log at info: one line per file, then one every 2 s.
 *
 * libcurl is loaded with dlopen at the first download, never linked: sluice
 * binaries are copied to GPU machines where nothing can be installed, and a
 * missing libcurl must fail a download (with a message saying so), never the
 * start of a sluice that reads local or cached models.
 *
 *   char dir[SL_HUB_PATH_MAX];
 *   if (sl_hub_resolve(arg, revision, SL_HUB_WEIGHTS, dir, sizeof dir, &e)) fail(e.msg);
 *   model_dir = dir;   // arg itself when arg is a local path
 */
#ifndef SL_HUB_H
#define SL_HUB_H

#include <stddef.h>

#include "sl_err.h"

#define SL_HUB_PATH_MAX 4096

/* What a caller reads from the model, so a router host never downloads weights. */
typedef enum sl_hub_files {
    SL_HUB_TEXT,    /* config.json, generation_config.json, tokenizer and chat template files */
    SL_HUB_WEIGHTS, /* those and the *.safetensors weights (with their index) */
} sl_hub_files;

/* Whether s has the form of a Hub model id, ORG/NAME: one '/', each side 1..96
 * of [A-Za-z0-9._-], not starting or ending with '.' or '-', no "--" or "..". */
int sl_hub_is_model_id(const char *s);

/* The directory to read model `path` from, written to dir (cap bytes): path
 * itself when it exists on disk or is not a model id (the loaders then say
 * what is wrong with it); else the cached snapshot of the model id at
 * `revision` (NULL: "main"; a branch, a tag or a 40-hex commit), downloading
 * the missing files first. Blocks for the whole download; call it from one
 * thread at a time (the first download initialises libcurl). Errors name the
 * model, the cache directory or the URL and HTTP status, and what to do. */
sl_status sl_hub_resolve(const char *path, const char *revision, sl_hub_files files, char *dir,
                         size_t cap, sl_err *e);

#endif
