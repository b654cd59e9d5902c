/* Arrow arrays handed to a compiled module by Python, read in place: a string, large_string
 * or int64 array given as (kind, offset, validity|None, offsets|None, data|None), its buffers
 * held while the module reads them and its offsets checked once, so per-row loops can trust
 * them. Shared by the enrichment kernels (enrich/_ckernels.c) and the decoder's strip_context
 * (events/_cdecode.c); each includes it after Python.h.
 */
#ifndef CLICKLAKE_CARROW_H
#define CLICKLAKE_CARROW_H

#include <Python.h>
#include <stdint.h>
#include <string.h>

enum { K_STRING, K_LARGE_STRING, K_INT64 };

typedef struct {
    int kind;
    Py_ssize_t offset; /* the array's offset into its buffers */
    const uint8_t *valid; /* validity bitmap; NULL: no nulls */
    const uint8_t *offsets; /* int32 or int64 value offsets (strings) */
    const uint8_t *data; /* string bytes, or int64 values */
    Py_ssize_t data_len;
    Py_buffer views[3];
    int held[3];
} Col;

static void col_release(Col *c) {
    for (int i = 0; i < 3; i++)
        if (c->held[i]) PyBuffer_Release(&c->views[i]);
}

static int col_view(Col *c, int i, PyObject *obj, Py_ssize_t need, const char *what) {
    if (obj == Py_None) return 0;
    if (PyObject_GetBuffer(obj, &c->views[i], PyBUF_SIMPLE) < 0) return -1;
    c->held[i] = 1;
    if (c->views[i].len < need) {
        PyErr_Format(PyExc_ValueError, "%s buffer too short: %zd bytes, need %zd", what, c->views[i].len, need);
        return -1;
    }
    return 0;
}

/* Parse (kind, offset, validity|None, offsets|None, data|None) describing n values. */
static int col_parse(PyObject *spec, Py_ssize_t n, Col *c) {
    memset(c, 0, sizeof(*c));
    const char *kind;
    PyObject *valid, *offsets, *data;
    if (!PyArg_ParseTuple(spec, "snOOO", &kind, &c->offset, &valid, &offsets, &data)) return -1;
    if (strcmp(kind, "string") == 0)
        c->kind = K_STRING;
    else if (strcmp(kind, "large_string") == 0)
        c->kind = K_LARGE_STRING;
    else if (strcmp(kind, "int64") == 0)
        c->kind = K_INT64;
    else {
        PyErr_Format(PyExc_ValueError, "unsupported column kind %s", kind);
        return -1;
    }
    if (c->offset < 0) {
        PyErr_SetString(PyExc_ValueError, "negative offset");
        return -1;
    }
    Py_ssize_t end = c->offset + n;
    if (col_view(c, 0, valid, (end + 7) / 8, "validity") < 0) return -1;
    c->valid = c->held[0] ? c->views[0].buf : NULL;
    if (c->kind == K_INT64) {
        if (data == Py_None) {
            PyErr_SetString(PyExc_ValueError, "int64 column without data");
            return -1;
        }
        if (col_view(c, 2, data, end * 8, "data") < 0) return -1;
        c->data = c->views[2].buf;
        return 0;
    }
    Py_ssize_t width = c->kind == K_STRING ? 4 : 8;
    if (offsets == Py_None) {
        PyErr_SetString(PyExc_ValueError, "string column without offsets");
        return -1;
    }
    if (col_view(c, 1, offsets, (end + 1) * width, "offsets") < 0) return -1;
    c->offsets = c->views[1].buf;
    if (col_view(c, 2, data, 0, "data") < 0) return -1;
    c->data = c->held[2] ? c->views[2].buf : (const uint8_t *)"";
    c->data_len = c->held[2] ? c->views[2].len : 0;
    /* Every value within the data buffer, checked once, so the loops can trust the offsets. */
    int64_t prev = 0;
    for (Py_ssize_t i = c->offset; i <= end; i++) {
        int64_t o = width == 4 ? ((const int32_t *)c->offsets)[i] : ((const int64_t *)c->offsets)[i];
        if (o < 0 || o > c->data_len || (i > c->offset && o < prev)) {
            PyErr_SetString(PyExc_ValueError, "string offsets out of range");
            return -1;
        }
        prev = o;
    }
    return 0;
}

static inline int col_valid(const Col *c, Py_ssize_t i) {
    Py_ssize_t j = c->offset + i;
    return c->valid == NULL || (c->valid[j >> 3] >> (j & 7)) & 1;
}

static inline void col_str(const Col *c, Py_ssize_t i, const uint8_t **s, size_t *len) {
    Py_ssize_t j = c->offset + i;
    int64_t a, b;
    if (c->kind == K_STRING) {
        a = ((const int32_t *)c->offsets)[j];
        b = ((const int32_t *)c->offsets)[j + 1];
    } else {
        a = ((const int64_t *)c->offsets)[j];
        b = ((const int64_t *)c->offsets)[j + 1];
    }
    *s = c->data + a;
    *len = (size_t)(b - a);
}

#endif
