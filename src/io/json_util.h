/* json_util.h — reading JSON configs (cJSON underneath) with errors that name the file and key. */
#ifndef SD3_JSON_UTIL_H
#define SD3_JSON_UTIL_H

#include <cjson/cJSON.h>
#include "core/core.h"

#define JSON_MAX_FILE (256u * 1024u * 1024u)

/* Read and parse a whole JSON file (at most JSON_MAX_FILE bytes); NULL + err on failure. */
cJSON *json_load_file(const char *path, sd3_err *err);
/* Read a whole file into a NUL-terminated malloc'd buffer (at most max bytes); NULL + err on failure. */
char *file_read_all(const char *path, size_t max, size_t *len, sd3_err *err);

/* Optional fields: the default when the key is absent or null. */
int json_int(const cJSON *o, const char *key, int def);
double json_num(const cJSON *o, const char *key, double def);
const char *json_str(const cJSON *o, const char *key, const char *def);
int json_bool(const cJSON *o, const char *key, int def);
/* Required fields: error "<label>: key '<key>' missing or not a <type>". */
sd3_status json_req_int(const cJSON *o, const char *key, int *out, const char *label, sd3_err *err);
sd3_status json_req_num(const cJSON *o, const char *key, double *out, const char *label, sd3_err *err);
/* Integer array: up to max values into out, count in *n. Absent/null key gives *n = 0. */
sd3_status json_int_array(const cJSON *o, const char *key, int *out, int max, int *n, const char *label, sd3_err *err);

#endif
