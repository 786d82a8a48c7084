/* image.c — image loading with stb_image (size-checked before decoding) and PNG writing with libpng
 * (text metadata, atomic rename). */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <png.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "io/image.h"

#include <stb/stb_image.h>

/* libpng reports errors through longjmp; keep the message for sd3_err. */
typedef struct { char msg[256]; } png_errbuf;
static void png_err_fn(png_structp p, png_const_charp msg) {
    png_errbuf *e = png_get_error_ptr(p);
    if (e) snprintf(e->msg, sizeof e->msg, "%s", msg);
    png_longjmp(p, 1);
}
static void png_warn_fn(png_structp p, png_const_charp msg) { (void)p; (void)msg; }

/* stb_image 2.27 (Debian's libstb) writes past a 257-byte array when a JPEG DHT segment declares more
 * than 256 Huffman codes (fixed upstream in 2.28), and reads an uninitialised table when a scan names a
 * Huffman table no DHT defined (both found by our fuzzer). This walks every marker segment (entropy-coded
 * data included: progressive files define tables between scans) and returns 0 for such a file, so it is
 * refused before stb sees it. Non-JPEG or truncated input returns 1 (stb rejects it). */
/* Where a JPEG's SOI marker ends, or 0 if d is no JPEG. stb takes any run of 0xFF fill bytes before
 * the D8 (its marker reader skips them), so this does too. */
static size_t jpeg_soi_end(const uint8_t *d, size_t n) {
    if (n < 2 || d[0] != 0xFF) return 0;
    size_t i = 1;
    while (i < n && d[i] == 0xFF) i++;
    return (i < n && d[i] == 0xD8) ? i + 1 : 0;
}

static int jpeg_dht_ok(const uint8_t *d, size_t n) {
    size_t i = jpeg_soi_end(d, n);
    if (!i) return 1;
    int defined[2][4] = {{0}};  /* Huffman tables seen so far: [class: 0 DC, 1 AC][id] */
    int progressive = 0;
    while (i + 4 <= n) {
        if (d[i] != 0xFF) { i++; continue; }           /* entropy-coded data or fill */
        uint8_t m = d[i + 1];
        if (m == 0xFF) { i++; continue; }               /* fill byte before a marker */
        if (m == 0x00 || m == 0x01 || (m >= 0xD0 && m <= 0xD8)) { i += 2; continue; }  /* stuffing, TEM, RSTn, SOI */
        if (m == 0xD9) return 1;                        /* EOI */
        size_t L = ((size_t)d[i + 2] << 8) | d[i + 3];
        if (m == 0xC2) progressive = 1;
        if (m == 0xC4) {                                /* DHT: tables of 1 + 16 counts + values */
            /* stb reads the whole declared segment, with zeros past the end of the file, so a table whose
             * count bytes are only partly present is still built: sum what is there */
            size_t p = i + 4, end = i + 2 + L;
            while (p < end) {
                size_t codes = 0;
                uint8_t tc = p < n ? d[p] : 0;
                for (int k = 0; k < 16; k++) codes += (p + 1 + k < n) ? d[p + 1 + k] : 0;
                if (codes > 256) return 0;
                if ((tc >> 4) < 2 && (tc & 15) < 4) defined[tc >> 4][tc & 15] = 1;
                p += 17 + codes;
            }
        }
        if (m == 0xDA && i + 5 <= n) {                  /* SOS: every table a scan uses must exist (stb reads an */
            size_t ns = d[i + 4];                       /* undefined one uninitialised; fuzzer find) */
            size_t q = i + 5, se = q + 2 * ns;
            uint8_t ss = se < n ? d[se] : 0, ah_al = se + 2 < n ? d[se + 2] : 0;
            int uses_dc = !progressive || (ss == 0 && (ah_al >> 4) == 0), uses_ac = !progressive || ss != 0;
            for (size_t c = 0; c < ns && q + 2 * c + 1 < n; c++) {
                uint8_t td = d[q + 2 * c + 1] >> 4, ta = d[q + 2 * c + 1] & 15;
                if (uses_dc && (td > 3 || !defined[0][td])) return 0;
                if (uses_ac && (ta > 3 || !defined[1][ta])) return 0;
            }
        }
        if (L < 2) return 1;
        i += 2 + L;
    }
    return 1;
}

/* Decode a PNG held in memory with libpng into 8-bit RGB the way PIL's convert("RGB") sees it: palette
 * and gray expanded, 16-bit reduced to 8, alpha dropped (not composited), no gamma conversion. PNGs go
 * to libpng rather than stb: libpng is the reference decoder and Debian's stb 2.27 has fuzzer-found
 * undefined behaviour on odd PNGs. Sizes are checked before any row is allocated. */
typedef struct { const unsigned char *p; size_t n, pos; } png_mem;
static void png_mem_read(png_structp png, png_bytep out, size_t len) {
    png_mem *m = png_get_io_ptr(png);
    if (len > m->n - m->pos) png_error(png, "unexpected end of file");
    memcpy(out, m->p + m->pos, len);
    m->pos += len;
}

/* Text chunks of a PNG that Pillow's getexif falls back on (see "EXIF orientation" below): the last
 * "XML:com.adobe.xmp" and "Raw profile type exif" texts (tEXt, zTXt or iTXt, inflated by libpng), copied
 * out of libpng's structures; NULL where absent. */
typedef struct { char *xmp, *raw; size_t xmp_n, raw_n; } png_meta;

static void png_meta_free(png_meta *m) {
    free(m->xmp);
    free(m->raw);
    memset(m, 0, sizeof *m);
}

/* Copy the texts png_meta wants from what libpng has read so far; an allocation failure drops the text. */
static void png_meta_collect(png_structp png, png_infop info, png_meta *m) {
    png_textp tx = NULL;
    int nt = 0;
    png_get_text(png, info, &tx, &nt);
    for (int i = 0; i < nt; i++) {
        int is_xmp = !strcmp(tx[i].key, "XML:com.adobe.xmp"), is_raw = !strcmp(tx[i].key, "Raw profile type exif");
        if (!is_xmp && !is_raw) continue;
        size_t len = tx[i].compression >= PNG_ITXT_COMPRESSION_NONE ? tx[i].itxt_length : tx[i].text_length;
        char *c = malloc(len + 1);
        if (c && len) memcpy(c, tx[i].text, len);
        if (c) c[len] = 0;
        char **dst = is_xmp ? &m->xmp : &m->raw;
        free(*dst);
        *dst = c;
        *(is_xmp ? &m->xmp_n : &m->raw_n) = c ? len : 0;
    }
}

static sd3_status png_decode(image *img, const unsigned char *buf, size_t n, png_meta *meta, const char *path, sd3_err *err) {
    png_errbuf eb = {{0}};
    volatile int image_read = 0;  /* 1 once every row is in: a later error only ends the metadata */
    png_mem mem = {buf, n, 0};
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &eb, png_err_fn, png_warn_fn);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    unsigned char *volatile rgb = NULL;  /* volatile: freed after png_error longjmps back */
    png_bytep *volatile rows = NULL;
    memset(img, 0, sizeof *img);
    if (!png || !info) {
        png_destroy_read_struct(&png, &info, NULL);
        return sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory", path);
    }
    if (setjmp(png_jmpbuf(png))) {
        if (image_read) goto done;   /* broken after the image data: the image stands, the texts read so far count */
        free(rows);
        png_destroy_read_struct(&png, &info, NULL);
        free(rgb);
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: cannot decode PNG: %s", path, eb.msg);
    }
    png_set_read_fn(png, &mem, png_mem_read);
    png_set_user_limits(png, IMAGE_MAX_SIDE, IMAGE_MAX_SIDE);
    png_set_chunk_malloc_max(png, (png_alloc_size_t)16 << 20);
    png_read_info(png, info);
    png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
    if (w == 0 || h == 0 || (uint64_t)w * h > (uint64_t)IMAGE_MAX_PIXELS) png_error(png, "image size outside the limits");
    int ct = png_get_color_type(png, info), bd = png_get_bit_depth(png, info);
    if (bd == 16) png_set_strip_16(png);
    if (ct == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if ((ct == PNG_COLOR_TYPE_GRAY || ct == PNG_COLOR_TYPE_GRAY_ALPHA) && bd < 8) png_set_expand_gray_1_2_4_to_8(png);
    if (ct == PNG_COLOR_TYPE_GRAY || ct == PNG_COLOR_TYPE_GRAY_ALPHA) png_set_gray_to_rgb(png);
    if (png_get_valid(png, info, PNG_INFO_tRNS)) png_set_tRNS_to_alpha(png);
    png_set_strip_alpha(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    if (png_get_rowbytes(png, info) != (size_t)w * 3) png_error(png, "unexpected row layout");
    rgb = malloc((size_t)w * h * 3);
    if (!rgb) png_error(png, "out of memory");
    rows = malloc(sizeof(png_bytep) * h);
    if (!rows) png_error(png, "out of memory");
    for (png_uint_32 y = 0; y < h; y++) rows[y] = rgb + (size_t)y * w * 3;
    png_read_image(png, rows);
    free(rows);
    rows = NULL;
    image_read = 1;
    if (meta) png_read_end(png, info);  /* text chunks after the image data count for Pillow too */
done:  /* also reached by longjmp: w and h are read again from info rather than from non-volatile locals */
    if (meta) png_meta_collect(png, info, meta);
    img->w = (int)png_get_image_width(png, info);
    img->h = (int)png_get_image_height(png, info);
    img->rgb = rgb;
    png_destroy_read_struct(&png, &info, NULL);
    return SD3_OK;
}

/* ---- EXIF orientation ----------------------------------------------------------------------------------
 * diffusers' load_image runs PIL.ImageOps.exif_transpose before convert("RGB"): an Orientation tag (0x0112)
 * of 2..8 in the image's EXIF is applied as a flip/rotation, anything else leaves the image as it is. The
 * EXIF is a TIFF block (II/MM header, IFD0 of 12-byte entries) in a JPEG's APP1 "Exif\0\0" segments or a
 * PNG's eXIf chunk. The reader below follows Pillow 13's (Image.Exif.load, TiffImagePlugin's
 * ImageFileDirectory_v2.load) step for step, so the same tag is found in the same broken files, and
 * bounds-checks every offset and count against the block: a lying or truncated EXIF reads nothing outside
 * it and, where Pillow finds no usable Orientation, the image loads untransformed. Where Pillow itself
 * raises (a header shorter than 8 bytes, BigTIFF, an unknown magic) diffusers cannot load the file at all;
 * we load it untransformed. Pillow's fallbacks are followed too: a PNG without eXIf takes its EXIF from a
 * "Raw profile type exif" text, and where the EXIF has no Orientation entry an XMP tiff:Orientation counts
 * (JPEG: APP1 "http://ns.adobe.com/xap/1.0/"; PNG: "XML:com.adobe.xmp" text). Not followed: a PNG tEXt
 * keyed "exif" (Pillow takes it as raw EXIF). */

static uint64_t ex_get(const uint8_t *p, int bytes, int be) {
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++) v |= (uint64_t)p[be ? i : bytes - 1 - i] << (8 * (bytes - 1 - i));
    return v;
}

/* Bytes per value of each TIFF type Pillow 13 loads (its _load_dispatch); 0 for types it skips. */
static unsigned ex_type_size(unsigned typ) {
    static const unsigned char sz[17] = {0, 1, 1, 2, 4, 8, 1, 1, 2, 4, 8, 4, 8, 4, 0, 0, 8};
    return typ < 17 ? sz[typ] : 0;
}

/* The orientation a first value v of TIFF type typ stands for, as Pillow compares it with 2..8 (ints, and
 * rationals/floats equal to one); 1 when it is none of them (BYTE, ASCII and UNDEFINED values are bytes or
 * text in Pillow and never equal an int). */
static int ex_value_orientation(const uint8_t *v, unsigned typ, int be) {
    int64_t k;
    switch (typ) {
    case 3: k = (int64_t)ex_get(v, 2, be); break;                        /* SHORT */
    case 4: case 13: k = (int64_t)ex_get(v, 4, be); break;               /* LONG, IFD */
    case 16: { uint64_t u = ex_get(v, 8, be); k = u > 8 ? 0 : (int64_t)u; break; }  /* LONG8 */
    case 6: k = (int8_t)v[0]; break;                                     /* SBYTE */
    case 8: k = (int16_t)(uint16_t)ex_get(v, 2, be); break;              /* SSHORT */
    case 9: k = (int32_t)(uint32_t)ex_get(v, 4, be); break;              /* SLONG */
    case 5: case 10: {                                                   /* (S)RATIONAL: num/den == k, den != 0 */
        uint32_t un = (uint32_t)ex_get(v, 4, be), ud = (uint32_t)ex_get(v + 4, 4, be);
        int64_t num = typ == 5 ? (int64_t)un : (int64_t)(int32_t)un, den = typ == 5 ? (int64_t)ud : (int64_t)(int32_t)ud;
        if (den == 0) return 1;
        for (int o = 2; o <= 8; o++)
            if (num == o * den) return o;
        return 1;
    }
    case 11: case 12: {                                                  /* FLOAT, DOUBLE: exactly k */
        double d;
        if (typ == 11) { uint32_t u = (uint32_t)ex_get(v, 4, be); float f; memcpy(&f, &u, 4); d = f; }
        else { uint64_t u = ex_get(v, 8, be); memcpy(&d, &u, 8); }
        for (int o = 2; o <= 8; o++)
            if (d == (double)o) return o;
        return 1;
    }
    default: return 1;
    }
    return k >= 2 && k <= 8 ? (int)k : 1;
}

/* The Orientation of an EXIF block as Pillow's Exif.load reads it: 2..8 to apply, 1 for an Orientation
 * entry whose value means nothing to exif_transpose, 0 for no Orientation entry at all. d holds what
 * Pillow keeps as info["exif"] less the prefixes it has already taken: up to strip more leading "Exif\0\0"
 * are dropped (Pillow drops two in all), then a classic TIFF header
 * (II*\0, MM\0*, or the byte-swapped magics Pillow also accepts) gives the byte order and IFD0's offset.
 * IFD0's entries are read while whole ones remain (entries read before a truncation count); the first
 * loadable entry of a tag wins; an out-of-line value larger than the block (counted cumulatively, as
 * Pillow does) is skipped, one that starts inside but runs past the end ends the walk. */
static int exif_orientation(const uint8_t *d, size_t n, int strip) {
    for (int k = 0; k < strip && n >= 6 && !memcmp(d, "Exif\0\0", 6); k++) { d += 6; n -= 6; }
    if (n < 8) return 0;
    int be;
    if (!memcmp(d, "MM\0*", 4) || !memcmp(d, "MM*\0", 4)) be = 1;
    else if (!memcmp(d, "II*\0", 4) || !memcmp(d, "II\0*", 4)) be = 0;
    else return 0;
    uint64_t pos = ex_get(d + 4, 4, be);
    if (pos > n || n - pos < 2) return 0;
    size_t count = (size_t)ex_get(d + pos, 2, be);
    pos += 2;
    uint8_t seen[65536 / 8] = {0};  /* tags loaded so far */
    uint64_t total = 0;             /* out-of-line bytes claimed so far */
    int orient = 0;                 /* 0: no Orientation entry loaded yet */
    for (size_t i = 0; i < count && n - pos >= 12; i++, pos += 12) {
        const uint8_t *e = d + pos;
        unsigned tag = (unsigned)ex_get(e, 2, be), typ = (unsigned)ex_get(e + 2, 2, be);
        uint64_t cnt = ex_get(e + 4, 4, be);
        if (seen[tag >> 3] & (1u << (tag & 7))) continue;
        unsigned unit = ex_type_size(typ);
        if (!unit) continue;
        uint64_t size = cnt * unit;
        const uint8_t *val = e + 8;
        if (size > 4) {
            uint64_t off = ex_get(e + 8, 4, be);
            total += size;
            if (total > n) continue;
            if (off > n || n - off < size) break;   /* Pillow: "Truncated File Read", the walk stops */
            val = d + off;
        }
        if (size == 0) continue;
        seen[tag >> 3] |= (uint8_t)(1u << (tag & 7));
        if (tag == 0x0112) orient = ex_value_orientation(val, typ, be);  /* val holds size >= unit bytes */
    }
    return orient;
}

/* The orientation of an XMP packet as Pillow's getexif falls back on it (only when the EXIF has no
 * Orientation entry): the first match of re.search(rb'tiff:Orientation(="|>)([0-9])'), 1 for none. */
static int xmp_orientation(const uint8_t *x, size_t n) {
    static const char key[] = "tiff:Orientation";
    const size_t kn = sizeof key - 1;
    for (size_t i = 0; n > kn && i < n - kn; i++) {
        if (memcmp(x + i, key, kn)) continue;
        size_t j = i + kn, dg;
        if (x[j] == '=' && n - j >= 3 && x[j + 1] == '"') dg = j + 2;
        else if (x[j] == '>' && n - j >= 2) dg = j + 1;
        else continue;
        if (x[dg] < '0' || x[dg] > '9') continue;
        return x[dg] >= '2' && x[dg] <= '8' ? x[dg] - '0' : 1;
    }
    return 1;
}

/* The EXIF Orientation of a JPEG held in memory: Pillow joins every APP1 "Exif\0\0" segment before the
 * first scan (the first whole, later ones without their 6-byte prefix) into one block; without an
 * Orientation entry there, the last XMP APP1's tiff:Orientation counts. A segment running past the end of
 * the file ends the search (Pillow would refuse the file). */
static int jpeg_exif_orientation(const uint8_t *d, size_t n) {
    static const char xmp_ns[] = "http://ns.adobe.com/xap/1.0/";  /* + NUL: an XMP APP1 */
    size_t i = jpeg_soi_end(d, n);
    if (!i) return 1;
    uint8_t *blk = NULL;
    size_t bn = 0;
    const uint8_t *xmp = NULL;  /* the last XMP packet (Pillow's info["xmp"]) */
    size_t xn = 0;
    while (i + 4 <= n) {
        if (d[i] != 0xFF) { i++; continue; }
        uint8_t m = d[i + 1];
        if (m == 0xFF) { i++; continue; }
        if (m == 0x00 || m == 0x01 || (m >= 0xD0 && m <= 0xD8)) { i += 2; continue; }
        if (m == 0xD9 || m == 0xDA) break;          /* EOI, SOS: Pillow reads no further */
        size_t L = ((size_t)d[i + 2] << 8) | d[i + 3];
        if (L < 2 || L - 2 > n - i - 4) break;
        const uint8_t *s = d + i + 4;
        size_t sn = L - 2;
        if (m == 0xE1 && sn >= 6 && !memcmp(s, "Exif\0\0", 6)) {
            size_t skip = blk ? 6 : 0;
            uint8_t *nb = realloc(blk, bn + sn - skip + 1);
            if (!nb) break;                          /* out of memory: use what was joined so far */
            blk = nb;
            memcpy(blk + bn, s + skip, sn - skip);
            bn += sn - skip;
        }
        if (m == 0xE1 && sn >= sizeof xmp_ns && !memcmp(s, xmp_ns, sizeof xmp_ns)) {
            xmp = s + sizeof xmp_ns;
            xn = sn - sizeof xmp_ns;
        }
        i += 2 + L;
    }
    int o = blk ? exif_orientation(blk, bn, 2) : 0;
    free(blk);
    return o ? o : xmp ? xmp_orientation(xmp, xn) : 1;
}

/* Bytes of Pillow's bytes.fromhex("".join(text.split("\n")[3:])) for a "Raw profile type exif" text
 * (ImageMagick's "\nexif\n  LENGTH\nHEX..."): after the third newline, pairs of hex digits, newlines dropped
 * and other ASCII whitespace allowed between pairs. Returns a malloc'd block of *bn bytes, or NULL where
 * there is no text after the third newline or Pillow's fromhex raises (diffusers then cannot load the
 * file; we read no EXIF from it). */
static uint8_t *raw_profile_bytes(const char *t, size_t n, size_t *bn) {
    size_t i = 0;
    for (int nl = 0; nl < 3; i++) {
        if (i >= n) { *bn = 0; return NULL; }  /* "".join([]): no EXIF */
        if (t[i] == '\n') nl++;
    }
    uint8_t *out = malloc((n - i) / 2 + 1);
    size_t k = 0;
    int half = -1;  /* the first digit of a pair, or -1 */
    for (; out && i < n; i++) {
        char c = t[i];
        if (c == '\n') continue;
        int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (v < 0 && half < 0 && (c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f')) continue;
        if (v < 0) { free(out); *bn = 0; return NULL; }
        if (half < 0) half = v;
        else { out[k++] = (uint8_t)(half << 4 | v); half = -1; }
    }
    if (!out || half >= 0) { free(out); *bn = 0; return NULL; }
    *bn = k;
    return out;
}

/* The EXIF Orientation of a PNG held in memory, as Pillow's getexif finds it. The EXIF is the last eXIf
 * chunk (Pillow reads chunks after the image data too, each eXIf replacing the one before); its data is
 * the TIFF block, to which Pillow prefixes "Exif\0\0" before dropping up to two, so one such prefix inside
 * the chunk is dropped as well (a second one is not: Pillow then finds no TIFF header and raises).
 * Without any eXIf, a "Raw profile type exif" text (hex, as ImageMagick writes it) is the EXIF. Without an
 * Orientation entry in either, the XMP text's tiff:Orientation counts. */
static int png_exif_orientation(const uint8_t *d, size_t n, const png_meta *meta) {
    const uint8_t *ex = NULL;
    size_t exn = 0;
    for (size_t pos = 8; pos + 8 <= n;) {
        uint32_t len = ((uint32_t)d[pos] << 24) | ((uint32_t)d[pos + 1] << 16) | ((uint32_t)d[pos + 2] << 8) | d[pos + 3];
        if ((uint64_t)len + 12 > n - pos) break;
        if (!memcmp(d + pos + 4, "IEND", 4)) break;
        if (!memcmp(d + pos + 4, "eXIf", 4)) { ex = d + pos + 8; exn = len; }
        pos += 12 + (size_t)len;
    }
    int o = 0;
    if (ex) o = exif_orientation(ex, exn, 1);
    else if (meta->raw) {
        size_t bn = 0;
        uint8_t *blk = raw_profile_bytes(meta->raw, meta->raw_n, &bn);
        if (blk) o = exif_orientation(blk, bn, 2);
        free(blk);
    }
    if (!o && meta->xmp) o = xmp_orientation((const uint8_t *)meta->xmp, meta->xmp_n);
    return o ? o : 1;
}

/* Apply EXIF orientation o (2..8) to img the way PIL's Image.transpose does for exif_transpose's choice:
 * 2 FLIP_LEFT_RIGHT, 3 ROTATE_180, 4 FLIP_TOP_BOTTOM, 5 TRANSPOSE, 6 ROTATE_270, 7 TRANSVERSE, 8 ROTATE_90
 * (ROTATE_n counter-clockwise). 5..8 swap width and height. Each output pixel (x, y) copies source pixel
 * (sx, sy). */
static sd3_status image_orient(image *img, int o, const char *path, sd3_err *err) {
    if (o < 2 || o > 8) return SD3_OK;
    int W = img->w, H = img->h, swap = o >= 5;
    int ow = swap ? H : W, oh = swap ? W : H;
    uint8_t *out = malloc((size_t)W * H * 3);
    if (!out) return sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory", path);
    for (int y = 0; y < oh; y++)
        for (int x = 0; x < ow; x++) {
            int sx, sy;
            switch (o) {
            case 2: sx = W - 1 - x; sy = y; break;
            case 3: sx = W - 1 - x; sy = H - 1 - y; break;
            case 4: sx = x; sy = H - 1 - y; break;
            case 5: sx = y; sy = x; break;
            case 6: sx = y; sy = H - 1 - x; break;
            case 7: sx = W - 1 - y; sy = H - 1 - x; break;
            default: sx = W - 1 - y; sy = x; break;  /* 8 */
            }
            memcpy(out + ((size_t)y * ow + x) * 3, img->rgb + ((size_t)sy * W + sx) * 3, 3);
        }
    free(img->rgb);
    img->rgb = out;
    img->w = ow;
    img->h = oh;
    return SD3_OK;
}

/* Read a whole file of at most max bytes. */
static unsigned char *read_file(FILE *f, size_t max, size_t *n) {
    if (fseek(f, 0, SEEK_END) != 0) return NULL;
    long len = ftell(f);
    if (len < 0 || (unsigned long)len > max || fseek(f, 0, SEEK_SET) != 0) return NULL;
    unsigned char *b = malloc((size_t)len + 1);
    if (!b) return NULL;
    if (fread(b, 1, (size_t)len, f) != (size_t)len) { free(b); return NULL; }
    *n = (size_t)len;
    return b;
}

sd3_status image_load(image *img, const char *path, sd3_err *err) {
    memset(img, 0, sizeof *img);
    struct stat sb;
    if (stat(path, &sb) != 0)
        return sd3_errf(err, errno == ENOENT ? SD3_ERR_NOT_FOUND : SD3_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    if (!S_ISREG(sb.st_mode)) return sd3_errf(err, SD3_ERR_IO, "%s: not a regular file", path);
    FILE *f = fopen(path, "rb");
    if (!f) return sd3_errf(err, SD3_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    size_t n = 0;
    unsigned char *buf = read_file(f, IMAGE_MAX_FILE, &n);
    fclose(f);
    if (!buf) return sd3_errf(err, SD3_ERR_IO, "%s: cannot read (or larger than %d MB)", path, (int)(IMAGE_MAX_FILE >> 20));
    /* Only PNG and JPEG are accepted: Debian's stb_image 2.27 has memory-safety bugs in its other readers
     * (16-bit PNM over-read, PNM integer overflow; found by our fuzzer), and PNG/JPEG are what sd3 takes. */
    static const unsigned char png_magic[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
    int is_png = n >= 8 && !memcmp(buf, png_magic, 8), is_jpeg = jpeg_soi_end(buf, n) != 0;
    if (!is_png && !is_jpeg) {
        free(buf);
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: not a PNG or JPEG image", path);
    }
    if (!jpeg_dht_ok(buf, n)) {
        free(buf);
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: corrupt JPEG (a Huffman table declares more than 256 codes, or a scan uses "
                                             "an undefined one)", path);
    }
    int w = 0, h = 0, c = 0;
    /* A PNG states its size in IHDR: check it ourselves, since stb refuses huge ones with a generic
     * "unknown image type" and we want the size named. */
    if (is_png && n >= 24 && !memcmp(buf + 12, "IHDR", 4)) {
        uint32_t pw = ((uint32_t)buf[16] << 24) | ((uint32_t)buf[17] << 16) | ((uint32_t)buf[18] << 8) | buf[19];
        uint32_t ph = ((uint32_t)buf[20] << 24) | ((uint32_t)buf[21] << 16) | ((uint32_t)buf[22] << 8) | buf[23];
        if (pw == 0 || ph == 0 || pw > IMAGE_MAX_SIDE || ph > IMAGE_MAX_SIDE || (uint64_t)pw * ph > (uint64_t)IMAGE_MAX_PIXELS) {
            free(buf);
            return sd3_errf(err, SD3_ERR_FORMAT, "%s: image is %ux%u, outside the limit of 1..%d per side and %lld pixels", path,
                            pw, ph, IMAGE_MAX_SIDE, (long long)IMAGE_MAX_PIXELS);
        }
    }
    if (is_png) {
        /* no chunk may claim more bytes than the file holds (libpng would try to allocate the claim) */
        for (size_t pos = 8; pos + 8 <= n;) {
            uint32_t len = ((uint32_t)buf[pos] << 24) | ((uint32_t)buf[pos + 1] << 16) | ((uint32_t)buf[pos + 2] << 8) | buf[pos + 3];
            if ((uint64_t)len + 12 > n - pos) {
                free(buf);
                return sd3_errf(err, SD3_ERR_FORMAT, "%s: corrupt PNG: a chunk claims %u bytes but the file has %zu left", path, len,
                                n - pos >= 12 ? n - pos - 12 : 0);
            }
            if (!memcmp(buf + pos + 4, "IEND", 4)) break;
            pos += 12 + (size_t)len;
        }
        png_meta meta = {0};
        sd3_status st = png_decode(img, buf, n, &meta, path, err);  /* libpng, not stb (see png_decode) */
        int orient = st == SD3_OK ? png_exif_orientation(buf, n, &meta) : 1;
        png_meta_free(&meta);
        free(buf);
        if (st == SD3_OK && (st = image_orient(img, orient, path, err)) != SD3_OK) image_free(img);
        return st;
    }
    if (n > INT_MAX || !stbi_info_from_memory(buf, (int)n, &w, &h, &c)) {
        free(buf);
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: not a readable image (%s)", path, stbi_failure_reason());
    }
    if (w <= 0 || h <= 0) { free(buf); return sd3_errf(err, SD3_ERR_FORMAT, "%s: image is %dx%d", path, w, h); }
    if (w > IMAGE_MAX_SIDE || h > IMAGE_MAX_SIDE || (int64_t)w * h > IMAGE_MAX_PIXELS) {
        free(buf);
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: image is %dx%d, over the limit of %d per side and %lld pixels", path, w, h,
                        IMAGE_MAX_SIDE, (long long)IMAGE_MAX_PIXELS);
    }
    int orient = jpeg_exif_orientation(buf, n);
    unsigned char *px = stbi_load_from_memory(buf, (int)n, &w, &h, &c, 3);
    free(buf);
    if (!px) return sd3_errf(err, SD3_ERR_FORMAT, "%s: cannot decode image (%s)", path, stbi_failure_reason());
    img->w = w;
    img->h = h;
    img->rgb = malloc((size_t)w * h * 3);
    if (!img->rgb) { stbi_image_free(px); return sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory", path); }
    memcpy(img->rgb, px, (size_t)w * h * 3);
    stbi_image_free(px);
    sd3_status st = image_orient(img, orient, path, err);  /* EXIF orientation, as diffusers' load_image */
    if (st != SD3_OK) image_free(img);
    return st;
}

void image_free(image *img) {
    free(img->rgb);
    memset(img, 0, sizeof *img);
}


sd3_status image_write_png(const image *img, const char *path, const image_text *text, int n_text, sd3_err *err) {
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid()) >= (int)sizeof tmp)
        return sd3_errf(err, SD3_ERR_INVALID_ARG, "%s: path too long", path);
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) return sd3_errf(err, SD3_ERR_IO, "%s: is a directory", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) return sd3_errf(err, SD3_ERR_IO, "%s: cannot write: %s", path, strerror(errno));
    png_errbuf eb = {{0}};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &eb, png_err_fn, png_warn_fn);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    png_textp volatile tx = NULL;  /* volatile: read after png_error longjmps back to setjmp */
    if (!png || !info) {
        png_destroy_write_struct(&png, &info);
        fclose(f);
        unlink(tmp);
        return sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory", path);
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        free(tx);
        fclose(f);
        unlink(tmp);
        return sd3_errf(err, SD3_ERR_IO, "%s: PNG write failed: %s", path, eb.msg);
    }
    png_init_io(png, f);
    png_set_IHDR(png, info, (png_uint_32)img->w, (png_uint_32)img->h, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (n_text > 0) {
        tx = calloc((size_t)n_text, sizeof *tx);
        if (!tx) png_error(png, "out of memory");
        for (int i = 0; i < n_text; i++) {
            tx[i].compression = PNG_ITXT_COMPRESSION_NONE;  /* UTF-8 prompts need iTXt */
            tx[i].key = (png_charp)text[i].key;
            tx[i].text = (png_charp)text[i].value;
            tx[i].lang = NULL;
            tx[i].lang_key = NULL;
        }
        png_set_text(png, info, tx, n_text);
    }
    png_write_info(png, info);
    for (int y = 0; y < img->h; y++) png_write_row(png, img->rgb + (size_t)y * img->w * 3);
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);
    free(tx);
    int bad = fflush(f) != 0 || fsync(fileno(f)) != 0;
    int saved = errno;
    if (fclose(f) != 0 && !bad) { bad = 1; saved = errno; }
    if (bad) { unlink(tmp); return sd3_errf(err, SD3_ERR_IO, "%s: write failed: %s", path, strerror(saved)); }
    if (rename(tmp, path) != 0) {
        saved = errno;
        unlink(tmp);
        return sd3_errf(err, SD3_ERR_IO, "%s: cannot rename into place: %s", path, strerror(saved));
    }
    return SD3_OK;
}

sd3_status image_read_png_text(const char *path, void (*fn)(const char *, const char *, void *), void *user, sd3_err *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return sd3_errf(err, errno == ENOENT ? SD3_ERR_NOT_FOUND : SD3_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    unsigned char sig[8];
    if (fread(sig, 1, 8, f) != 8 || png_sig_cmp(sig, 0, 8)) {
        fclose(f);
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: not a PNG file", path);
    }
    /* Walk the chunk headers first: a chunk may not claim more bytes than the file has (libpng would
     * allocate the claimed size before finding out: a 48-byte file claiming a 2 GB tEXt chunk). */
    if (fseek(f, 0, SEEK_END) != 0) { fclose(f); return sd3_errf(err, SD3_ERR_IO, "%s: cannot seek", path); }
    long fsize = ftell(f);
    for (long pos = 8; pos + 8 <= fsize;) {
        unsigned char hdr[8];
        if (fseek(f, pos, SEEK_SET) != 0 || fread(hdr, 1, 8, f) != 8) break;
        uint32_t len = ((uint32_t)hdr[0] << 24) | ((uint32_t)hdr[1] << 16) | ((uint32_t)hdr[2] << 8) | hdr[3];
        if ((int64_t)len > (int64_t)fsize - pos - 12) {
            fclose(f);
            return sd3_errf(err, SD3_ERR_FORMAT, "%s: corrupt PNG: chunk '%.4s' claims %u bytes but the file has %ld left", path,
                            (const char *)hdr + 4, len, fsize - pos - 12 > 0 ? fsize - pos - 12 : 0);
        }
        if (!memcmp(hdr + 4, "IEND", 4)) break;
        pos += 12 + (long)len;
    }
    if (fseek(f, 8, SEEK_SET) != 0) { fclose(f); return sd3_errf(err, SD3_ERR_IO, "%s: cannot seek", path); }
    png_errbuf eb = {{0}};
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &eb, png_err_fn, png_warn_fn);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!png || !info) {
        png_destroy_read_struct(&png, &info, NULL);
        fclose(f);
        return sd3_errf(err, SD3_ERR_NOMEM, "%s: out of memory", path);
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_read_struct(&png, &info, NULL);
        fclose(f);
        return sd3_errf(err, SD3_ERR_FORMAT, "%s: corrupt PNG: %s", path, eb.msg);
    }
    png_init_io(png, f);
    png_set_sig_bytes(png, 8);
    /* bounded work for hostile files: a chunk may not make libpng allocate more than 16 MB, and at most
     * 1000 ancillary chunks are kept */
    png_set_user_limits(png, IMAGE_MAX_SIDE, IMAGE_MAX_SIDE);
    png_set_chunk_malloc_max(png, (png_alloc_size_t)16 << 20);
    png_set_chunk_cache_max(png, 1000);
    png_read_info(png, info);
    png_textp tx;
    int n = 0;
    png_get_text(png, info, &tx, &n);
    for (int i = 0; i < n; i++) fn(tx[i].key, tx[i].text, user);
    png_destroy_read_struct(&png, &info, NULL);
    fclose(f);
    return SD3_OK;
}

void image_from_chw(image *img, const float *chw, int H, int W) {
    size_t plane = (size_t)H * W;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            for (int c = 0; c < 3; c++) {
                float v = chw[c * plane + (size_t)y * W + x] / 2.0f + 0.5f;
                v = v < 0 ? 0 : v > 1 ? 1 : v;
                img->rgb[((size_t)y * W + x) * 3 + c] = (uint8_t)nearbyintf(v * 255.0f);
            }
}

void image_to_chw(const image *img, float *chw) {
    size_t plane = (size_t)img->h * img->w;
    for (int y = 0; y < img->h; y++)
        for (int x = 0; x < img->w; x++)
            for (int c = 0; c < 3; c++)
                chw[c * plane + (size_t)y * img->w + x] = (float)img->rgb[((size_t)y * img->w + x) * 3 + c] / 127.5f - 1.0f;
}
