/* json_util.c — JSON config helpers (see json_util.h). */
#include <errno.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>
#include "io/json_util.h"

char *file_read_all(const char *path, size_t max, size_t *len, sd3_err *err) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        sd3_errf(err, errno == ENOENT ? SD3_ERR_NOT_FOUND : SD3_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        fclose(f);
        sd3_errf(err, SD3_ERR_IO, "%s: not a regular file", path);
        return NULL;
    }
    if ((uint64_t)sb.st_size > max) {
        fclose(f);
        sd3_errf(err, SD3_ERR_FORMAT, "%s: file of %lld bytes exceeds the limit of %zu", path, (long long)sb.st_size, max);
        return NULL;
    }
    size_t n = (size_t)sb.st_size;
    char *buf = malloc(n + 1);
    if (!buf) { fclose(f); sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory", path); return NULL; }
    size_t got = fread(buf, 1, n, f);
    fclose(f);
    if (got != n) { free(buf); sd3_errf(err, SD3_ERR_IO, "%s: short read", path); return NULL; }
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}

cJSON *json_load_file(const char *path, sd3_err *err) {
    size_t n;
    char *buf = file_read_all(path, JSON_MAX_FILE, &n, err);
    if (!buf) return NULL;
    cJSON *j = cJSON_ParseWithLength(buf, n);
    free(buf);
    if (!j) sd3_errf(err, SD3_ERR_FORMAT, "%s: not valid JSON", path);
    return j;
}

static const cJSON *get(const cJSON *o, const char *key) {
    const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
    return (v && !cJSON_IsNull(v)) ? v : NULL;
}

/* A JSON number as int without undefined behaviour: NaN gives def, out-of-range values saturate (so a
 * config validator downstream sees an absurd value and names it, instead of a wrapped one). */
static int to_int(double d, int def) {
    if (d != d) return def;
    if (d >= 2147483647.0) return INT_MAX;
    if (d <= -2147483648.0) return INT_MIN;
    return (int)d;
}

int json_int(const cJSON *o, const char *key, int def) {
    const cJSON *v = get(o, key);
    return cJSON_IsNumber(v) ? to_int(v->valuedouble, def) : def;
}
double json_num(const cJSON *o, const char *key, double def) {
    const cJSON *v = get(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : def;
}
const char *json_str(const cJSON *o, const char *key, const char *def) {
    const cJSON *v = get(o, key);
    return cJSON_IsString(v) ? v->valuestring : def;
}
int json_bool(const cJSON *o, const char *key, int def) {
    const cJSON *v = get(o, key);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : def;
}

sd3_status json_req_int(const cJSON *o, const char *key, int *out, const char *label, sd3_err *err) {
    const cJSON *v = get(o, key);
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= -2147483648.0 && v->valuedouble <= 2147483647.0) ||
        v->valuedouble != (double)(int)v->valuedouble)
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: key '%s' missing or not an integer", label, key);
    *out = (int)v->valuedouble;
    return SD3_OK;
}

sd3_status json_req_num(const cJSON *o, const char *key, double *out, const char *label, sd3_err *err) {
    const cJSON *v = get(o, key);
    if (!cJSON_IsNumber(v)) return sd3_errf(err, SD3_ERR_FORMAT, "%s: key '%s' missing or not a number", label, key);
    *out = v->valuedouble;
    return SD3_OK;
}

sd3_status json_int_array(const cJSON *o, const char *key, int *out, int max, int *n, const char *label, sd3_err *err) {
    *n = 0;
    const cJSON *v = get(o, key);
    if (!v) return SD3_OK;
    if (!cJSON_IsArray(v)) return sd3_errf(err, SD3_ERR_FORMAT, "%s: key '%s' is not an array", label, key);
    int cnt = cJSON_GetArraySize(v);
    if (cnt > max) return sd3_errf(err, SD3_ERR_FORMAT, "%s: key '%s' has %d values (at most %d)", label, key, cnt, max);
    for (int i = 0; i < cnt; i++) {
        const cJSON *e = cJSON_GetArrayItem(v, i);
        if (!cJSON_IsNumber(e) || !(e->valuedouble >= -2147483648.0 && e->valuedouble <= 2147483647.0) ||
            e->valuedouble != (double)(int)e->valuedouble)
            return sd3_errf(err, SD3_ERR_FORMAT, "%s: key '%s'[%d] is not an integer", label, key, i);
        out[i] = (int)e->valuedouble;
    }
    *n = cnt;
    return SD3_OK;
}
