/* Memory a compiled module hands to Python: one malloc'd block, owned by a small object that
 * exposes it through the buffer protocol (read-only), for pyarrow.py_buffer to wrap without a
 * copy. Shared by the decoder (events/_cdecode.c) and the enrichment kernels
 * (enrich/_ckernels.c); each defines CLICKLAKE_BUF_NAME and CLICKLAKE_BUF_DOC, then includes it,
 * and makes its module with clicklake_module.
 */
#ifndef CLICKLAKE_CBUFFER_H
#define CLICKLAKE_CBUFFER_H

#include <Python.h>
#include <stdlib.h>

typedef struct {
    PyObject_HEAD
    char *data;
    Py_ssize_t size;
} BufObject;

static void buf_dealloc(BufObject *self) {
    free(self->data);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int buf_getbuffer(BufObject *self, Py_buffer *view, int flags) {
    return PyBuffer_FillInfo(view, (PyObject *)self, self->data, self->size, 1, flags);
}

static PyBufferProcs buf_as_buffer = {(getbufferproc)buf_getbuffer, NULL};

static PyTypeObject BufType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = CLICKLAKE_BUF_NAME,
    .tp_basicsize = sizeof(BufObject),
    .tp_dealloc = (destructor)buf_dealloc,
    .tp_as_buffer = &buf_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = CLICKLAKE_BUF_DOC,
};

/* Takes ownership of data. */
static PyObject *buf_new(char *data, Py_ssize_t size) {
    if (data == NULL) data = malloc(8); /* Arrow wants a pointer even for no bytes */
    if (data == NULL) return PyErr_NoMemory();
    BufObject *b = PyObject_New(BufObject, &BufType);
    if (b == NULL) {
        free(data);
        return NULL;
    }
    b->data = data;
    b->size = size;
    return (PyObject *)b;
}

/* The module of ``def``, with the buffer type ready and the constant ABI (what the Python
 * side expects of this build; a stale build counts as none there). */
static PyObject *clicklake_module(PyModuleDef *def, long abi) {
    if (PyType_Ready(&BufType) < 0) return NULL;
    PyObject *m = PyModule_Create(def);
    if (m && PyModule_AddIntConstant(m, "ABI", abi) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

#endif
