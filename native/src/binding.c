/* binding.c: the CPython extension module native._engine, a thin layer over sov.h that
 * releases the GIL around loading, decoding and sampling. native/engine.py is its only user. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "sov.h"

#include <string.h>

/* ---------------------------------------------------------------------------------------
 * Errors
 * ------------------------------------------------------------------------------------- */

static PyObject *error_class; /* set by set_error_class(); RuntimeError until then */

static const char *status_code(sov_status st) {
    switch (st) {
    case SOV_ERR_IO: return "io";
    case SOV_ERR_FORMAT: return "format";
    case SOV_ERR_UNSUPPORTED: return "unsupported";
    case SOV_ERR_NOMEM: return "no_memory";
    case SOV_ERR_INVALID_ARGUMENT: return "invalid_argument";
    case SOV_ERR_CONTEXT_FULL: return "context_full";
    case SOV_ERR_NUMERIC: return "numeric";
    case SOV_ERR_NOT_FOUND: return "not_found";
    case SOV_OK: return "ok";
    }
    return "unknown";
}

static PyObject *raise_status(sov_status st) {
    PyObject *cls = error_class ? error_class : PyExc_RuntimeError;
    PyObject *exc = PyObject_CallFunction(cls, "s", "");
    if (!exc) return NULL;
    PyObject *msg = PyUnicode_FromFormat("%s: %s", sov_status_message(st), sov_last_error());
    PyObject *args = msg ? PyTuple_Pack(1, msg) : NULL;
    PyObject *code = PyUnicode_FromString(status_code(st));
    if (args && code && PyObject_SetAttrString(exc, "args", args) == 0 && PyObject_SetAttrString(exc, "code", code) == 0)
        PyErr_SetObject(cls, exc);
    Py_XDECREF(msg);
    Py_XDECREF(args);
    Py_XDECREF(code);
    Py_DECREF(exc);
    return NULL;
}

static PyObject *set_error_class(PyObject *self, PyObject *cls) {
    (void)self;
    if (!PyType_Check(cls) || !PyObject_IsSubclass(cls, PyExc_Exception)) {
        PyErr_SetString(PyExc_TypeError, "expected an Exception subclass");
        return NULL;
    }
    Py_INCREF(cls);
    Py_XSETREF(error_class, cls);
    Py_RETURN_NONE;
}

/* Copies a sequence of Python ints into a new int32 array. */
static int32_t *int32_array(PyObject *seq, Py_ssize_t *n_out) {
    PyObject *fast = PySequence_Fast(seq, "expected a sequence of ints");
    if (!fast) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    int32_t *out = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(int32_t));
    if (!out) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        long v = PyLong_AsLong(PySequence_Fast_GET_ITEM(fast, i));
        if (v == -1 && PyErr_Occurred()) goto fail;
        if (v < INT32_MIN || v > INT32_MAX) {
            PyErr_SetString(PyExc_OverflowError, "value does not fit in int32");
            goto fail;
        }
        out[i] = (int32_t)v;
    }
    Py_DECREF(fast);
    *n_out = n;
    return out;
fail:
    Py_DECREF(fast);
    PyMem_Free(out);
    return NULL;
}

/* ---------------------------------------------------------------------------------------
 * Model
 * ------------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    sov_model *model;
} ModelObject;

static int Model_init(ModelObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"path", "threads", "force_scalar", NULL};
    PyObject *path_obj;
    int threads = 1, force_scalar = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O&|ii", kwlist, PyUnicode_FSConverter, &path_obj, &threads, &force_scalar)) return -1;
    if (self->model) {
        Py_DECREF(path_obj);
        PyErr_SetString(PyExc_RuntimeError, "Model is already initialised");
        return -1;
    }
    sov_model_params p = sov_model_default_params();
    p.n_threads = threads;
    p.force_scalar = force_scalar;
    sov_status st;
    Py_BEGIN_ALLOW_THREADS
    st = sov_model_load(PyBytes_AS_STRING(path_obj), &p, &self->model);
    Py_END_ALLOW_THREADS
    Py_DECREF(path_obj);
    if (st != SOV_OK) {
        raise_status(st);
        return -1;
    }
    return 0;
}

static void Model_dealloc(ModelObject *self) {
    sov_model_free(self->model);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int model_ready(ModelObject *self) {
    if (self->model) return 1;
    PyErr_SetString(PyExc_RuntimeError, "Model is not initialised");
    return 0;
}

static PyObject *Model_info(ModelObject *self, PyObject *unused) {
    (void)unused;
    if (!model_ready(self)) return NULL;
    sov_model_info in;
    sov_model_info_get(self->model, &in);
    return Py_BuildValue("{s:s,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:d,s:d,s:d,s:O,s:i,s:i,s:s}", "architecture", in.architecture, "n_layer",
                         in.n_layer, "n_embd", in.n_embd, "n_head", in.n_head, "n_head_kv", in.n_head_kv, "head_dim", in.head_dim, "n_rot", in.n_rot,
                         "n_ff", in.n_ff, "n_vocab", in.n_vocab, "n_ctx_train", in.n_ctx_train, "rope_freq_base", (double)in.rope_freq_base,
                         "rope_freq_scale", (double)in.rope_freq_scale, "rms_norm_eps", (double)in.rms_norm_eps, "tied_output",
                         in.tied_output ? Py_True : Py_False, "bos_token", in.bos_token, "eos_token", in.eos_token, "kernels", in.kernels);
}

static PyObject *array_to_python(const sov_gguf_array *array);

static PyObject *value_to_python(const sov_gguf_value *v) {
    switch (v->type) {
    case SOV_GGUF_UINT8: case SOV_GGUF_UINT16: case SOV_GGUF_UINT32: case SOV_GGUF_UINT64: return PyLong_FromUnsignedLongLong(v->as.u64);
    case SOV_GGUF_INT8: case SOV_GGUF_INT16: case SOV_GGUF_INT32: case SOV_GGUF_INT64: return PyLong_FromLongLong(v->as.i64);
    case SOV_GGUF_FLOAT32: case SOV_GGUF_FLOAT64: return PyFloat_FromDouble(v->as.f64);
    case SOV_GGUF_BOOL: return PyBool_FromLong((long)v->as.u64);
    case SOV_GGUF_STRING: return PyUnicode_DecodeUTF8(v->as.str.data, (Py_ssize_t)v->as.str.size, "replace");
    case SOV_GGUF_ARRAY: return array_to_python(v->as.array);
    }
    Py_RETURN_NONE;
}

/* A list, nested as deep as the file's arrays (the parser caps that depth, and so this recursion). */
static PyObject *array_to_python(const sov_gguf_array *array) {
    sov_gguf_type element_type;
    uint64_t length;
    sov_status st = sov_gguf_array_type(array, &element_type, &length);
    if (st != SOV_OK) return raise_status(st);
    if (length > (uint64_t)PY_SSIZE_T_MAX) return PyErr_NoMemory();
    PyObject *list = PyList_New((Py_ssize_t)length);
    for (uint64_t e = 0; list && e < length; e++) {
        sov_gguf_value v;
        st = sov_gguf_array_value(array, e, &v);
        PyObject *item = st == SOV_OK ? value_to_python(&v) : raise_status(st);
        if (!item) Py_CLEAR(list);
        else PyList_SET_ITEM(list, (Py_ssize_t)e, item);
    }
    return list;
}

static PyObject *Model_metadata(ModelObject *self, PyObject *unused) {
    (void)unused;
    if (!model_ready(self)) return NULL;
    const sov_gguf *g = sov_model_gguf(self->model);
    PyObject *out = PyDict_New();
    if (!out) return NULL;
    for (uint64_t i = 0; i < sov_gguf_kv_count(g); i++) {
        sov_gguf_type type;
        sov_gguf_kv_type(g, i, &type, NULL, NULL);
        PyObject *value;
        if (type == SOV_GGUF_ARRAY) {
            const sov_gguf_array *array;
            sov_status st = sov_gguf_kv_array(g, i, &array);
            value = st == SOV_OK ? array_to_python(array) : raise_status(st);
        } else {
            sov_gguf_value v;
            sov_gguf_kv_value(g, i, 0, &v);
            value = value_to_python(&v);
        }
        if (!value || PyDict_SetItemString(out, sov_gguf_kv_key(g, i), value) != 0) {
            Py_XDECREF(value);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(value);
    }
    return out;
}

static PyObject *Model_tensors(ModelObject *self, PyObject *unused) {
    (void)unused;
    if (!model_ready(self)) return NULL;
    const sov_gguf *g = sov_model_gguf(self->model);
    PyObject *out = PyList_New(0);
    for (uint64_t i = 0; out && i < sov_gguf_tensor_count(g); i++) {
        sov_gguf_tensor_info t;
        sov_gguf_tensor_info_get(g, i, &t);
        PyObject *dims = PyTuple_New(t.n_dims);
        for (uint32_t d = 0; dims && d < t.n_dims; d++) PyTuple_SET_ITEM(dims, d, PyLong_FromUnsignedLongLong(t.dims[d]));
        const char *type_name = sov_tensor_type_name(t.type);
        PyObject *row = dims ? Py_BuildValue("(ssN)", t.name, type_name ? type_name : "unknown", dims) : NULL;
        if (!row || PyList_Append(out, row) != 0) Py_CLEAR(out);
        Py_XDECREF(row);
    }
    return out;
}

static PyMethodDef Model_methods[] = {
    {"info", (PyCFunction)Model_info, METH_NOARGS, "Hyperparameters and kernels as a dict."},
    {"metadata", (PyCFunction)Model_metadata, METH_NOARGS, "Every GGUF metadata entry as a dict."},
    {"tensors", (PyCFunction)Model_tensors, METH_NOARGS, "(name, type name, dims) of every tensor."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ModelType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "native._engine.Model",
    .tp_basicsize = sizeof(ModelObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Model_init,
    .tp_dealloc = (destructor)Model_dealloc,
    .tp_methods = Model_methods,
    .tp_doc = "A loaded GGUF model.",
};

/* ---------------------------------------------------------------------------------------
 * Context
 * ------------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    sov_context *ctx;
    ModelObject *model;
    uint32_t n_vocab, n_embd;
} ContextObject;

static int Context_init(ContextObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"model", "n_ctx", "n_seq_max", "n_ubatch", NULL};
    ModelObject *model;
    unsigned int n_ctx = 0, n_seq_max = 1, n_ubatch = 256;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!|III", kwlist, &ModelType, &model, &n_ctx, &n_seq_max, &n_ubatch)) return -1;
    if (!model_ready(model)) return -1;
    if (self->ctx) {
        PyErr_SetString(PyExc_RuntimeError, "Context is already initialised");
        return -1;
    }
    sov_context_params p = sov_context_default_params();
    p.n_ctx = n_ctx;
    p.n_seq_max = n_seq_max;
    p.n_ubatch = n_ubatch;
    sov_status st = sov_context_init(model->model, &p, &self->ctx);
    if (st != SOV_OK) {
        raise_status(st);
        return -1;
    }
    sov_model_info in;
    sov_model_info_get(model->model, &in);
    self->n_vocab = in.n_vocab;
    self->n_embd = in.n_embd;
    Py_INCREF(model);
    self->model = model;
    return 0;
}

static void Context_dealloc(ContextObject *self) {
    sov_context_free(self->ctx);
    Py_XDECREF(self->model);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int context_ready(ContextObject *self) {
    if (self->ctx) return 1;
    PyErr_SetString(PyExc_RuntimeError, "Context is not initialised");
    return 0;
}

/* decode(tokens, seq_ids, outputs: bytes) -> (logits bytes, embeddings bytes) as float32 rows. */
static PyObject *Context_decode(ContextObject *self, PyObject *args) {
    PyObject *tokens_obj, *seqs_obj;
    Py_buffer outputs;
    if (!context_ready(self) || !PyArg_ParseTuple(args, "OOy*", &tokens_obj, &seqs_obj, &outputs)) return NULL;
    Py_ssize_t n_tok = 0, n_seq = 0;
    int32_t *tokens = NULL, *seqs = NULL;
    PyObject *logits = NULL, *embeddings = NULL, *result = NULL;
    tokens = int32_array(tokens_obj, &n_tok);
    if (tokens) seqs = int32_array(seqs_obj, &n_seq);
    if (!tokens || !seqs) goto done;
    if (n_seq != n_tok || outputs.len != n_tok || n_tok > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "tokens, seq_ids and outputs must have the same length");
        goto done;
    }
    const uint8_t *out_flags = outputs.buf;
    Py_ssize_t n_logits = 0, n_embd = 0;
    for (Py_ssize_t i = 0; i < n_tok; i++) {
        n_logits += (out_flags[i] & SOV_OUTPUT_LOGITS) != 0;
        n_embd += (out_flags[i] & SOV_OUTPUT_EMBEDDING) != 0;
    }
    logits = PyBytes_FromStringAndSize(NULL, n_logits * (Py_ssize_t)self->n_vocab * 4);
    embeddings = PyBytes_FromStringAndSize(NULL, n_embd * (Py_ssize_t)self->n_embd * 4);
    if (!logits || !embeddings) goto done;
    sov_batch batch = {(int32_t)n_tok, tokens, seqs, out_flags};
    float *lp = (float *)PyBytes_AS_STRING(logits), *ep = (float *)PyBytes_AS_STRING(embeddings);
    sov_status st;
    Py_BEGIN_ALLOW_THREADS
    st = sov_context_decode(self->ctx, &batch, lp, ep);
    Py_END_ALLOW_THREADS
    if (st != SOV_OK) {
        raise_status(st);
        goto done;
    }
    result = PyTuple_Pack(2, logits, embeddings);
done:
    PyBuffer_Release(&outputs);
    PyMem_Free(tokens);
    PyMem_Free(seqs);
    Py_XDECREF(logits);
    Py_XDECREF(embeddings);
    return result;
}

static PyObject *Context_seq_reset(ContextObject *self, PyObject *arg) {
    if (!context_ready(self)) return NULL;
    long seq = PyLong_AsLong(arg);
    if (seq == -1 && PyErr_Occurred()) return NULL;
    sov_status st = sov_context_seq_reset(self->ctx, seq < INT32_MIN || seq > INT32_MAX ? -1 : (int32_t)seq);
    if (st != SOV_OK) return raise_status(st);
    Py_RETURN_NONE;
}

static PyObject *Context_seq_truncate(ContextObject *self, PyObject *args) {
    if (!context_ready(self)) return NULL;
    long seq, keep;
    if (!PyArg_ParseTuple(args, "ll", &seq, &keep)) return NULL;
    if (keep < 0 || keep > (long)UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "n_keep must be between 0 and the sequence's length");
        return NULL;
    }
    sov_status st = sov_context_seq_truncate(self->ctx, seq < INT32_MIN || seq > INT32_MAX ? -1 : (int32_t)seq, (uint32_t)keep);
    if (st != SOV_OK) return raise_status(st);
    Py_RETURN_NONE;
}

static PyObject *Context_seq_length(ContextObject *self, PyObject *arg) {
    if (!context_ready(self)) return NULL;
    long seq = PyLong_AsLong(arg);
    if (seq == -1 && PyErr_Occurred()) return NULL;
    return PyLong_FromLong(sov_context_seq_length(self->ctx, seq < INT32_MIN || seq > INT32_MAX ? -1 : (int32_t)seq));
}

static PyObject *Context_n_ctx(ContextObject *self, PyObject *unused) {
    (void)unused;
    if (!context_ready(self)) return NULL;
    return PyLong_FromUnsignedLong(sov_context_n_ctx(self->ctx));
}

static PyMethodDef Context_methods[] = {
    {"decode", (PyCFunction)Context_decode, METH_VARARGS, "decode(tokens, seq_ids, outputs) -> (logits, embeddings) float32 bytes."},
    {"seq_reset", (PyCFunction)Context_seq_reset, METH_O, "Forget a sequence."},
    {"seq_truncate", (PyCFunction)Context_seq_truncate, METH_VARARGS, "seq_truncate(seq, n_keep): keep a sequence's first n_keep tokens."},
    {"seq_length", (PyCFunction)Context_seq_length, METH_O, "Tokens held for a sequence (-1: bad id)."},
    {"n_ctx", (PyCFunction)Context_n_ctx, METH_NOARGS, "Context length per sequence."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ContextType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "native._engine.Context",
    .tp_basicsize = sizeof(ContextObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Context_init,
    .tp_dealloc = (destructor)Context_dealloc,
    .tp_methods = Context_methods,
    .tp_doc = "KV caches for a set of sequences of one model.",
};

/* ---------------------------------------------------------------------------------------
 * Sampler
 * ------------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    sov_sampler *sampler;
    int32_t n_vocab;
} SamplerObject;

static int Sampler_init(SamplerObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"n_vocab", "temperature", "top_k", "top_p", "min_p", "repeat_penalty", "repeat_last_n", "seed", NULL};
    sov_sampler_params p = sov_sampler_default_params();
    int n_vocab;
    unsigned long long seed = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i|fifffiK", kwlist, &n_vocab, &p.temperature, &p.top_k, &p.top_p, &p.min_p,
                                     &p.repeat_penalty, &p.repeat_last_n, &seed))
        return -1;
    p.seed = seed;
    if (self->sampler) {
        PyErr_SetString(PyExc_RuntimeError, "Sampler is already initialised");
        return -1;
    }
    sov_status st = sov_sampler_init(&p, n_vocab, &self->sampler);
    if (st != SOV_OK) {
        raise_status(st);
        return -1;
    }
    self->n_vocab = n_vocab;
    return 0;
}

static void Sampler_dealloc(SamplerObject *self) {
    sov_sampler_free(self->sampler);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* sample(logits: float32 buffer of n_vocab, history: sequence of ints) -> int */
static PyObject *Sampler_sample(SamplerObject *self, PyObject *args) {
    Py_buffer logits;
    PyObject *history_obj;
    if (!self->sampler) {
        PyErr_SetString(PyExc_RuntimeError, "Sampler is not initialised");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "y*O", &logits, &history_obj)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t n_history = 0;
    int32_t *history = NULL;
    if (logits.len != (Py_ssize_t)self->n_vocab * 4) {
        PyErr_Format(PyExc_ValueError, "expected %d float32 logits", self->n_vocab);
        goto done;
    }
    history = int32_array(history_obj, &n_history);
    if (!history) goto done;
    int32_t token = 0;
    sov_status st;
    Py_BEGIN_ALLOW_THREADS
    st = sov_sampler_sample(self->sampler, logits.buf, history, (size_t)n_history, &token);
    Py_END_ALLOW_THREADS
    result = st == SOV_OK ? PyLong_FromLong(token) : raise_status(st);
done:
    PyBuffer_Release(&logits);
    PyMem_Free(history);
    return result;
}

static PyMethodDef Sampler_methods[] = {
    {"sample", (PyCFunction)Sampler_sample, METH_VARARGS, "sample(logits, history) -> token id."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SamplerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "native._engine.Sampler",
    .tp_basicsize = sizeof(SamplerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Sampler_init,
    .tp_dealloc = (destructor)Sampler_dealloc,
    .tp_methods = Sampler_methods,
    .tp_doc = "A seeded token sampler.",
};

/* ---------------------------------------------------------------------------------------
 * Module functions and initialisation
 * ------------------------------------------------------------------------------------- */

/* dequantize(type, data, n) -> float32 bytes */
static PyObject *dequantize(PyObject *self, PyObject *args) {
    (void)self;
    unsigned int type;
    Py_buffer data;
    unsigned long long n;
    if (!PyArg_ParseTuple(args, "Iy*K", &type, &data, &n)) return NULL;
    PyObject *out = NULL;
    uint64_t bytes;
    sov_status st = sov_tensor_row_size(type, n, &bytes);
    if (st != SOV_OK) raise_status(st);
    else if (bytes != (uint64_t)data.len) PyErr_Format(PyExc_ValueError, "%llu elements take %llu bytes, got %zd", n, (unsigned long long)bytes, data.len);
    else if ((out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(n * 4))) != NULL)
        sov_tensor_dequantize(type, data.buf, (float *)PyBytes_AS_STRING(out), n);
    PyBuffer_Release(&data);
    return out;
}

static PyMethodDef module_methods[] = {
    {"set_error_class", set_error_class, METH_O, "Exception class raised for engine failures."},
    {"dequantize", dequantize, METH_VARARGS, "dequantize(type, data, n) -> float32 bytes."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "native._engine", "Binding of the sov C engine.", -1, module_methods,
                                        NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__engine(void) {
    if (PyType_Ready(&ModelType) < 0 || PyType_Ready(&ContextType) < 0 || PyType_Ready(&SamplerType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (!m) return NULL;
    if (PyModule_AddObjectRef(m, "Model", (PyObject *)&ModelType) < 0 || PyModule_AddObjectRef(m, "Context", (PyObject *)&ContextType) < 0 ||
        PyModule_AddObjectRef(m, "Sampler", (PyObject *)&SamplerType) < 0 || PyModule_AddIntConstant(m, "OUTPUT_LOGITS", SOV_OUTPUT_LOGITS) < 0 ||
        PyModule_AddIntConstant(m, "OUTPUT_EMBEDDING", SOV_OUTPUT_EMBEDDING) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
