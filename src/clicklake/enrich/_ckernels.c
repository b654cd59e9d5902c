/* Compiled kernels of the enrichment steps (see clicklake/enrich/kernels.py).
 *
 * Per-row loops that Arrow and DuckDB only do with a round trip through a relation or a
 * dictionary of the column:
 *
 * - fingerprint(): DuckDB's hash() of a row over several columns, bit for bit (strings,
 *   int64 timestamps and NULLs), without copying the columns into DuckDB first. dedup's
 *   event_fingerprint is persisted, so the DuckDB query stays the reference it is tested against.
 * - hex16(): 64-bit values as 16 lower-case hex digits, how event_fingerprint is written.
 * - contains(): whether each row's text holds a literal; what campaign asks of every context.
 * - replace_quoted(): in each row's text, every '"<old>"' replaced by '"<new>"' (or by 'null'
 *   when new is NULL), left to right and non-overlapping, as DuckDB's replace() does; what the
 *   ip_anonymization step does to context.ip.
 * - bucket(): Iceberg's bucket transform of strings (murmur3_x86_32 of the UTF-8 bytes, seed 0,
 *   sign bit cleared, modulo the bucket count), what the writer partitions events by
 *   (bucket(16, user_key)); PyIceberg's own stays the reference the tests hold it to.
 *
 * All read Arrow arrays given as (kind, offset, validity, offsets, data) tuples and run with
 * the GIL released. Plain CPython C API, no other library; optional: where this does not
 * build, the steps take their DuckDB paths, with the same results.
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE /* memmem */
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- owned buffers for Python */

#define CLICKLAKE_BUF_NAME "clicklake.enrich._ckernels.Buffer"
#define CLICKLAKE_BUF_DOC "Memory written by a kernel, exposed through the buffer protocol (read-only)."
#include "../_cbuffer.h"

#include "../_carrow.h"

/* ---------------------------------------------------------------- DuckDB's hash() */

#define DUCK_M 0xd6e8feb86659fd93ULL
#define DUCK_NULL 0xbf58476d1ce4e5b9ULL

static inline uint64_t duck_murmur(uint64_t x) {
    x ^= x >> 32;
    x *= DUCK_M;
    x ^= x >> 32;
    x *= DUCK_M;
    x ^= x >> 32;
    return x;
}

/* DuckDB's hash of a string: its length, then each 8-byte word (the tail zero-padded)
 * xor-multiplied in, then the murmur finalizer. */
static inline uint64_t duck_hash_bytes(const uint8_t *s, size_t n) {
    uint64_t h = 0xe17a1465ULL ^ ((uint64_t)n * 0xc6a4a7935bd1e995ULL);
    size_t full = n & ~(size_t)7;
    for (size_t i = 0; i < full; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8); /* little-endian hosts only: checked at import */
        h ^= w;
        h *= DUCK_M;
    }
    if (n & 7) {
        uint64_t w = 0;
        memcpy(&w, s + full, n & 7);
        h ^= w;
        h *= DUCK_M;
    }
    return duck_murmur(h);
}

static inline uint64_t duck_combine(uint64_t a, uint64_t b) {
    a ^= a >> 32;
    a *= DUCK_M;
    return a ^ b;
}

static PyObject *fingerprint(PyObject *self, PyObject *args) {
    Py_ssize_t n;
    PyObject *specs;
    if (!PyArg_ParseTuple(args, "nO!", &n, &PyTuple_Type, &specs)) return NULL;
    Py_ssize_t k = PyTuple_GET_SIZE(specs);
    if (n < 0 || k == 0) {
        PyErr_SetString(PyExc_ValueError, "need rows >= 0 and at least one column");
        return NULL;
    }
    Col *cols = calloc((size_t)k, sizeof(Col));
    uint64_t *out = malloc((size_t)(n ? n : 1) * sizeof(uint64_t));
    if (cols == NULL || out == NULL) {
        free(cols);
        free(out);
        return PyErr_NoMemory();
    }
    Py_ssize_t parsed = 0;
    for (; parsed < k; parsed++)
        if (col_parse(PyTuple_GET_ITEM(specs, parsed), n, &cols[parsed]) < 0) break;
    if (parsed == k) {
        Py_BEGIN_ALLOW_THREADS;
        /* Column by column over all rows (as DuckDB does), each pass streaming one column. */
        for (Py_ssize_t c = 0; c < k; c++) {
            const Col *col = &cols[c];
            for (Py_ssize_t i = 0; i < n; i++) {
                uint64_t h;
                if (!col_valid(col, i)) {
                    h = DUCK_NULL;
                } else if (col->kind == K_INT64) {
                    int64_t v;
                    memcpy(&v, col->data + (col->offset + i) * 8, 8);
                    h = duck_murmur((uint64_t)v);
                } else {
                    const uint8_t *s;
                    size_t len;
                    col_str(col, i, &s, &len);
                    h = duck_hash_bytes(s, len);
                }
                out[i] = c == 0 ? h : duck_combine(out[i], h);
            }
        }
        Py_END_ALLOW_THREADS;
    }
    for (Py_ssize_t c = 0; c < parsed; c++) col_release(&cols[c]);
    if (parsed < k) {
        col_release(&cols[parsed]);
        free(cols);
        free(out);
        return NULL;
    }
    free(cols);
    return buf_new((char *)out, n * (Py_ssize_t)sizeof(uint64_t));
}

/* ---------------------------------------------------------------- hex16() */

static PyObject *hex16(PyObject *self, PyObject *args) {
    Py_buffer in;
    PyObject *alloc;
    if (!PyArg_ParseTuple(args, "y*O", &in, &alloc)) return NULL;
    Py_ssize_t n = in.len / 8;
    PyObject *buf = PyObject_CallFunction(alloc, "n", n * 16);
    Py_buffer out;
    if (buf == NULL || PyObject_GetBuffer(buf, &out, PyBUF_WRITABLE) < 0) {
        Py_XDECREF(buf);
        PyBuffer_Release(&in);
        return NULL;
    }
    if (out.len < n * 16) {
        PyBuffer_Release(&out);
        PyBuffer_Release(&in);
        Py_DECREF(buf);
        PyErr_SetString(PyExc_ValueError, "allocated buffer too short");
        return NULL;
    }
    static const char digits[] = "0123456789abcdef";
    Py_BEGIN_ALLOW_THREADS;
    const uint8_t *src = in.buf;
    char *dst = out.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t v;
        memcpy(&v, src + i * 8, 8);
        for (int j = 15; j >= 0; j--) {
            dst[i * 16 + j] = digits[v & 15];
            v >>= 4;
        }
    }
    Py_END_ALLOW_THREADS;
    PyBuffer_Release(&out);
    PyBuffer_Release(&in);
    return buf;
}

/* ---------------------------------------------------------------- replace_quoted() */

/* What one row is to be rewritten with: its text, and the pattern and replacement (plen 0:
 * kept as it is). */
typedef struct {
    const uint8_t *s;
    size_t len;
    const uint8_t *old;
    size_t plen; /* '"' + old + '"' */
    const uint8_t *rep;
    size_t rlen; /* new, or "null" (then quoted is 0) */
    int quoted;
} Row;

static inline void row_of(const Col *text, const Col *old, const Col *new, Py_ssize_t i, Row *r) {
    memset(r, 0, sizeof(*r));
    if (!col_valid(text, i)) return;
    col_str(text, i, &r->s, &r->len);
    if (!col_valid(old, i)) return;
    size_t olen;
    col_str(old, i, &r->old, &olen);
    if (col_valid(new, i)) {
        col_str(new, i, &r->rep, &r->rlen);
        if (r->rlen == olen && memcmp(r->rep, r->old, olen) == 0) return; /* kept as sent */
        r->quoted = 1;
    } else {
        r->rep = (const uint8_t *)"null";
        r->rlen = 4;
    }
    r->plen = olen + 2;
}

/* Takes ownership of nothing; returns a new reference to a writable Arrow buffer of n bytes
 * (from the caller's allocator, so the memory is Arrow's pool's, as the rest of the batch). */
static PyObject *allocate(PyObject *alloc, Py_ssize_t n, Py_buffer *view) {
    PyObject *buf = PyObject_CallFunction(alloc, "n", n);
    if (buf == NULL) return NULL;
    if (PyObject_GetBuffer(buf, view, PyBUF_WRITABLE) < 0) {
        Py_DECREF(buf);
        return NULL;
    }
    if (view->len < n) {
        PyBuffer_Release(view);
        Py_DECREF(buf);
        PyErr_SetString(PyExc_ValueError, "allocated buffer too short");
        return NULL;
    }
    return buf;
}

static PyObject *replace_quoted(PyObject *self, PyObject *args) {
    Py_ssize_t n;
    PyObject *text_spec, *old_spec, *new_spec, *alloc;
    if (!PyArg_ParseTuple(args, "nOOOO", &n, &text_spec, &old_spec, &new_spec, &alloc)) return NULL;
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "negative row count");
        return NULL;
    }
    Col cols[3];
    PyObject *specs[3] = {text_spec, old_spec, new_spec};
    for (int i = 0; i < 3; i++) {
        int bad = col_parse(specs[i], n, &cols[i]) < 0;
        if (!bad && cols[i].kind == K_INT64) {
            PyErr_SetString(PyExc_ValueError, "replace_quoted takes string columns");
            bad = 1;
        }
        if (bad) {
            for (int j = 0; j <= i; j++) col_release(&cols[j]);
            return NULL;
        }
    }
    const Col *text = &cols[0], *old = &cols[1], *new = &cols[2];
    PyObject *result = NULL, *ob = NULL, *db = NULL;
    Py_buffer ov, dv;
    int have_ov = 0, have_dv = 0;
    /* Pass 1 finds the matches (kept, in order) and the output offsets; pass 2 copies. */
    int64_t *offsets = malloc((size_t)(n + 1) * sizeof(int64_t));
    size_t nhits = 0, hits_cap = 1024, pattern_cap = 64;
    const uint8_t **hits = malloc(hits_cap * sizeof(*hits));
    uint8_t *pattern = malloc(pattern_cap);
    int oom = offsets == NULL || hits == NULL || pattern == NULL;
    if (!oom) {
        Py_BEGIN_ALLOW_THREADS;
        int64_t at = 0;
        offsets[0] = 0;
        for (Py_ssize_t i = 0; i < n && !oom; i++) {
            Row r;
            row_of(text, old, new, i, &r);
            at += (int64_t)r.len;
            if (r.plen) {
                if (r.plen > pattern_cap) {
                    uint8_t *p2 = realloc(pattern, r.plen);
                    if (p2 == NULL) {
                        oom = 1;
                        break;
                    }
                    pattern = p2;
                    pattern_cap = r.plen;
                }
                pattern[0] = '"';
                memcpy(pattern + 1, r.old, r.plen - 2);
                pattern[r.plen - 1] = '"';
                const uint8_t *end = r.s + r.len, *q = r.s;
                while ((size_t)(end - q) >= r.plen && (q = memmem(q, (size_t)(end - q), pattern, r.plen)) != NULL) {
                    if (nhits == hits_cap) {
                        const uint8_t **h2 = realloc(hits, 2 * hits_cap * sizeof(*hits));
                        if (h2 == NULL) {
                            oom = 1;
                            break;
                        }
                        hits = h2;
                        hits_cap *= 2;
                    }
                    hits[nhits++] = q;
                    at += (int64_t)(r.rlen + 2 * r.quoted) - (int64_t)r.plen;
                    q += r.plen;
                }
            }
            offsets[i + 1] = at;
        }
        Py_END_ALLOW_THREADS;
    }
    if (oom) {
        PyErr_NoMemory();
        goto done;
    }
    if (nhits == 0) { /* nothing replaced: the caller keeps its array */
        result = Py_None;
        Py_INCREF(result);
        goto done;
    }
    ob = allocate(alloc, (n + 1) * (Py_ssize_t)sizeof(int64_t), &ov);
    if (ob == NULL) goto done;
    have_ov = 1;
    db = allocate(alloc, (Py_ssize_t)offsets[n], &dv);
    if (db == NULL) goto done;
    have_dv = 1;
    Py_BEGIN_ALLOW_THREADS;
    memcpy(ov.buf, offsets, (size_t)(n + 1) * sizeof(int64_t));
    uint8_t *out = dv.buf;
    size_t h = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Row r;
        row_of(text, old, new, i, &r);
        const uint8_t *from = r.s, *end = r.s + r.len;
        for (; h < nhits && hits[h] >= r.s && hits[h] < end; h++) {
            size_t keep = (size_t)(hits[h] - from);
            memcpy(out, from, keep);
            out += keep;
            if (r.quoted) *out++ = '"';
            memcpy(out, r.rep, r.rlen);
            out += r.rlen;
            if (r.quoted) *out++ = '"';
            from = hits[h] + r.plen;
        }
        memcpy(out, from, (size_t)(end - from));
        out += end - from;
    }
    Py_END_ALLOW_THREADS;
    result = Py_BuildValue("(OO)", ob, db);
done:
    if (have_ov) PyBuffer_Release(&ov);
    if (have_dv) PyBuffer_Release(&dv);
    Py_XDECREF(ob);
    Py_XDECREF(db);
    free(offsets);
    free(hits);
    free(pattern);
    for (int i = 0; i < 3; i++) col_release(&cols[i]);
    return result;
}

/* ---------------------------------------------------------------- one string column in, n values out */

/* Parse the string column of a per-row kernel and allocate its output of n values of `width`
 * bytes (malloc'd, for buf_new). NULL with the error set (and the column released) on failure. */
static void *text_and_out(PyObject *spec, Py_ssize_t n, Col *text, size_t width, const char *kernel) {
    if (col_parse(spec, n, text) < 0 || text->kind == K_INT64) {
        if (!PyErr_Occurred()) PyErr_Format(PyExc_ValueError, "%s takes a string column", kernel);
        col_release(text);
        return NULL;
    }
    void *out = malloc((size_t)(n ? n : 1) * width);
    if (out == NULL) {
        col_release(text);
        PyErr_NoMemory();
    }
    return out;
}

/* ---------------------------------------------------------------- contains() */

static PyObject *contains(PyObject *self, PyObject *args) {
    Py_ssize_t n;
    PyObject *text_spec;
    const char *lit;
    Py_ssize_t lit_len;
    if (!PyArg_ParseTuple(args, "nOy#", &n, &text_spec, &lit, &lit_len)) return NULL;
    if (n < 0 || lit_len == 0) {
        PyErr_SetString(PyExc_ValueError, "need rows >= 0 and a non-empty literal");
        return NULL;
    }
    Col text;
    uint8_t *out = text_and_out(text_spec, n, &text, 1, "contains");
    if (out == NULL) return NULL;
    Py_BEGIN_ALLOW_THREADS;
    for (Py_ssize_t i = 0; i < n; i++) {
        const uint8_t *s;
        size_t len;
        out[i] = 0;
        if (!col_valid(&text, i)) continue;
        col_str(&text, i, &s, &len);
        out[i] = len >= (size_t)lit_len && memmem(s, len, lit, (size_t)lit_len) != NULL;
    }
    Py_END_ALLOW_THREADS;
    col_release(&text);
    return buf_new((char *)out, n);
}

/* ---------------------------------------------------------------- bucket() */

static inline uint32_t rotl32(uint32_t x, int r) { return (x << r) | (x >> (32 - r)); }

/* MurmurHash3_x86_32 with seed 0, as Iceberg's spec (and Guava's murmur3_32) defines it. */
static uint32_t murmur3_32(const uint8_t *p, size_t len) {
    const uint32_t c1 = 0xcc9e2d51u, c2 = 0x1b873593u;
    uint32_t h = 0, k;
    size_t blocks = len / 4;
    for (size_t b = 0; b < blocks; b++) {
        memcpy(&k, p + 4 * b, 4); /* little-endian load (kernels.py checks the byte order) */
        k *= c1;
        k = rotl32(k, 15);
        k *= c2;
        h ^= k;
        h = rotl32(h, 13);
        h = h * 5 + 0xe6546b64u;
    }
    const uint8_t *tail = p + 4 * blocks;
    k = 0;
    switch (len & 3) {
    case 3:
        k ^= (uint32_t)tail[2] << 16; /* fall through */
    case 2:
        k ^= (uint32_t)tail[1] << 8; /* fall through */
    case 1:
        k ^= tail[0];
        k *= c1;
        k = rotl32(k, 15);
        k *= c2;
        h ^= k;
    }
    h ^= (uint32_t)len;
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h;
}

static PyObject *bucket(PyObject *self, PyObject *args) {
    Py_ssize_t n;
    PyObject *spec;
    int buckets;
    if (!PyArg_ParseTuple(args, "nOi", &n, &spec, &buckets)) return NULL;
    if (n < 0 || buckets <= 0) {
        PyErr_SetString(PyExc_ValueError, "need rows >= 0 and buckets > 0");
        return NULL;
    }
    Col text;
    int32_t *out = text_and_out(spec, n, &text, sizeof(int32_t), "bucket");
    if (out == NULL) return NULL;
    Py_BEGIN_ALLOW_THREADS;
    for (Py_ssize_t i = 0; i < n; i++) {
        const uint8_t *s;
        size_t len;
        out[i] = 0; /* a NULL's slot: the caller keeps the input's validity */
        if (!col_valid(&text, i)) continue;
        col_str(&text, i, &s, &len);
        out[i] = (int32_t)((murmur3_32(s, len) & 0x7fffffffu) % (uint32_t)buckets);
    }
    Py_END_ALLOW_THREADS;
    col_release(&text);
    return buf_new((char *)out, n * (Py_ssize_t)sizeof(int32_t));
}

static PyMethodDef methods[] = {
    {"fingerprint", fingerprint, METH_VARARGS, "DuckDB's hash() over columns, per row, as uint64 bytes."},
    {"hex16", hex16, METH_VARARGS, "Native uint64 values as 16 lower-case hex digits each, in a buffer from the allocator."},
    {"contains", contains, METH_VARARGS, "Whether each text holds a byte string (null: false), as uint8 bytes."},
    {"replace_quoted", replace_quoted, METH_VARARGS,
     "Each '\"old\"' in each text replaced by '\"new\"' (null: 'null'); None when nothing changed."},
    {"bucket", bucket, METH_VARARGS, "Iceberg's bucket transform of each string, as int32 bytes (NULL: 0)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ckernels", NULL, -1, methods};

PyMODINIT_FUNC PyInit__ckernels(void) {
    return clicklake_module(&module, 2); /* ABI: what kernels.py expects of this build */
}
