/* The mixer's compiled block: every voice of the table mixed in one call.
 *
 * `Mixer` (mixer.py) keeps the voice table in numpy arrays and handles events in Python; a
 * `Kernel` is bound once to those arrays (it holds their buffers, so they cannot move) and
 * `Kernel.mix(n)` does what the numpy path's `_select`, `_gather`, copies, envelopes, matrix
 * product and `_advance` do, in one pass over the slots, with no Python object made.  In a
 * stream, where the thread sleeps between calls and its caches go cold, the numpy path's ~50
 * calls a block cost more than the voices themselves; this is one call.
 *
 * Real-time contract: no allocation after construction (the scratch is made by the
 * constructor), no lock, no Python call but list reads; the GIL is kept (taking it back after
 * releasing it could wait for another thread).  A voice in a bad state is not mixed and is
 * reported (kind 2: state, position, rate or gain out of range; kind 3: its note is not a
 * C-contiguous float32 buffer at least as long as the voice's length); Python frees it.
 *
 * A note's samples are read through a pointer cached per slot, taken again (through the
 * buffer protocol) whenever the slot's object in the notes list or its generation (``gen``,
 * bumped by every note-on) changes.  The pointer stays valid because the list holds the note.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stddef.h>
#include <string.h>

#define FREE 0
#define ACTIVE 1
#define RELEASED 2
#define FADING 3
#define N_CHANNELS 16
#define N_BUF 19
#define LANES 8

typedef struct {
    PyObject_HEAD
    Py_buffer buf[N_BUF];
    int n_buf;                  /* buffers held so far (released by dealloc) */
    PyObject *notes;            /* the voice table's list of note arrays */
    Py_ssize_t slots, block;    /* voices in the table, largest block */
    int8_t *state;
    double *pos, *len, *rate, *gain, *cur_l, *cur_r, *rel_len, *rel_left;
    int16_t *channel;
    int64_t *gen;
    double *ch_gain, *ch_pan_l, *ch_pan_r;
    float *lr, *ramp;           /* out: [2, n] left then right; in: (i + 1) / n */
    int64_t *end_slot;          /* out: slots to free after this block */
    int8_t *end_kind;           /* out: 1 ended, 2 bad state, 3 bad note */
    double *info;               /* out: peak, sounding, active */
    /* per slot: the note seen last (borrowed, compared only), its generation and samples */
    PyObject **seen;
    int64_t *seen_gen;
    const float **samples;
    Py_ssize_t *n_samples;
    float *voice, *env;         /* scratch of one voice's block */
    double depth;               /* exponential release: log(1000) */
} Kernel;

/* The arrays the kernel is bound to, in the order of its ``arrays`` argument: item kind ('i'
 * integer, 'f' float), item size, how many items (per slot, per channel, per frame of the
 * largest block, twice that, or 3) and the field that points at them. */
enum { PER_SLOT, PER_CHANNEL, PER_FRAME, PER_2FRAMES, THREE };
typedef struct {
    char kind;
    Py_ssize_t itemsize;
    int count;
    const char *name;
    size_t field;
} Spec;

static const Spec SPECS[N_BUF] = {
    {'i', 1, PER_SLOT, "state", offsetof(Kernel, state)},
    {'f', 8, PER_SLOT, "pos", offsetof(Kernel, pos)},
    {'f', 8, PER_SLOT, "len", offsetof(Kernel, len)},
    {'f', 8, PER_SLOT, "rate", offsetof(Kernel, rate)},
    {'f', 8, PER_SLOT, "gain", offsetof(Kernel, gain)},
    {'f', 8, PER_SLOT, "cur_l", offsetof(Kernel, cur_l)},
    {'f', 8, PER_SLOT, "cur_r", offsetof(Kernel, cur_r)},
    {'i', 2, PER_SLOT, "channel", offsetof(Kernel, channel)},
    {'f', 8, PER_SLOT, "rel_len", offsetof(Kernel, rel_len)},
    {'f', 8, PER_SLOT, "rel_left", offsetof(Kernel, rel_left)},
    {'i', 8, PER_SLOT, "gen", offsetof(Kernel, gen)},
    {'f', 8, PER_CHANNEL, "ch_gain", offsetof(Kernel, ch_gain)},
    {'f', 8, PER_CHANNEL, "ch_pan_l", offsetof(Kernel, ch_pan_l)},
    {'f', 8, PER_CHANNEL, "ch_pan_r", offsetof(Kernel, ch_pan_r)},
    {'f', 4, PER_2FRAMES, "lr", offsetof(Kernel, lr)},
    {'f', 4, PER_FRAME, "ramp", offsetof(Kernel, ramp)},
    {'i', 8, PER_SLOT, "end_slot", offsetof(Kernel, end_slot)},
    {'i', 1, PER_SLOT, "end_kind", offsetof(Kernel, end_kind)},
    {'f', 8, THREE, "info", offsetof(Kernel, info)},
};

/* A buffer's format without its byte-order prefix ("<f" and "=f" are "f"). */
static const char *plain_format(const char *fmt)
{
    if (fmt == NULL)
        return "B";
    while (*fmt == '<' || *fmt == '>' || *fmt == '=' || *fmt == '@' || *fmt == '!')
        fmt++;
    return fmt;
}

/* Binds the field of ``spec`` to ``obj``'s buffer, checked against the spec. */
static int take(Kernel *self, PyObject *obj, const Spec *spec)
{
    Py_buffer *view = &self->buf[self->n_buf];
    Py_ssize_t counts[] = {self->slots, N_CHANNELS, self->block, 2 * self->block, 3};
    Py_ssize_t count = counts[spec->count], itemsize = spec->itemsize;
    const char *fmt;
    char c;
    if (PyObject_GetBuffer(obj, view, PyBUF_WRITABLE | PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    self->n_buf++;
    fmt = plain_format(view->format);
    c = fmt[0];
    if (c == '\0' || fmt[1] != '\0' || view->itemsize != itemsize
            || (spec->kind == 'f' && c != 'f' && c != 'd')
            || (spec->kind == 'i' && strchr("bBhHiIlLqQ?", c) == NULL)
            || view->len / itemsize < count) {
        PyErr_Format(PyExc_ValueError, "Kernel: %s must hold %zd items of %zd bytes (%c)",
                     spec->name, count, itemsize, spec->kind);
        return -1;
    }
    *(void **)((char *)self + spec->field) = view->buf;
    return 0;
}

static void Kernel_dealloc(Kernel *self)
{
    int k;
    for (k = 0; k < self->n_buf; k++)
        PyBuffer_Release(&self->buf[k]);
    Py_XDECREF(self->notes);
    PyMem_Free(self->seen);
    PyMem_Free(self->seen_gen);
    PyMem_Free(self->samples);
    PyMem_Free(self->n_samples);
    PyMem_Free(self->voice);
    PyMem_Free(self->env);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Kernel_init(Kernel *self, PyObject *args, PyObject *kwds)
{
    PyObject *notes, *arrays;
    Py_ssize_t S, B, k;
    (void)kwds;
    if (self->n_buf || self->notes) {
        PyErr_SetString(PyExc_RuntimeError, "Kernel: already bound");
        return -1;
    }
    if (!PyArg_ParseTuple(args, "nnO!O!:Kernel", &S, &B, &PyList_Type, &notes, &PyTuple_Type,
                          &arrays))
        return -1;
    if (S < 1 || B < 1 || PyList_GET_SIZE(notes) != S || PyTuple_GET_SIZE(arrays) != N_BUF) {
        PyErr_Format(PyExc_ValueError, "Kernel: slots and block > 0, a note per slot and %d "
                     "arrays", N_BUF);
        return -1;
    }
    self->slots = S;
    self->block = B;
    for (k = 0; k < N_BUF; k++)
        if (take(self, PyTuple_GET_ITEM(arrays, k), &SPECS[k]) < 0)
            return -1;
    Py_INCREF(notes);
    self->notes = notes;
    self->seen = PyMem_Calloc(S, sizeof(PyObject *));
    self->seen_gen = PyMem_Calloc(S, sizeof(int64_t));
    self->samples = PyMem_Calloc(S, sizeof(float *));
    self->n_samples = PyMem_Calloc(S, sizeof(Py_ssize_t));
    self->voice = PyMem_Calloc(B + LANES, sizeof(float));
    self->env = PyMem_Calloc(B + LANES, sizeof(float));
    if (!self->seen || !self->seen_gen || !self->samples || !self->n_samples || !self->voice
            || !self->env) {
        PyErr_NoMemory();
        return -1;
    }
    self->depth = log(1000.0);
    return 0;
}

/* The slot's note samples; 0 when its object is not a C-contiguous float32 buffer. */
static int note_of(Kernel *self, Py_ssize_t s)
{
    PyObject *obj;
    Py_buffer view;
    int ok;
    if (PyList_GET_SIZE(self->notes) <= s)
        return 0;
    obj = PyList_GET_ITEM(self->notes, s);
    if (obj == self->seen[s] && self->gen[s] == self->seen_gen[s] && self->samples[s])
        return 1;
    self->seen[s] = obj;
    self->seen_gen[s] = self->gen[s];
    self->samples[s] = NULL;
    if (!PyObject_CheckBuffer(obj))
        return 0;
    if (PyObject_GetBuffer(obj, &view, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) {
        PyErr_Clear();
        return 0;
    }
    ok = view.itemsize == 4 && strcmp(plain_format(view.format), "f") == 0 && view.ndim == 1;
    if (ok) {
        self->samples[s] = (const float *)view.buf;
        self->n_samples[s] = view.len / 4;
    }
    PyBuffer_Release(&view);     /* the list keeps the note, so its samples stay put */
    return ok;
}

/* ``nv`` samples of the slot from position ``p`` at ``rate``: a copy at rate 1 from an integer
 * position, else a linear interpolation, as the numpy path's. */
static void read_voice(Kernel *self, Py_ssize_t s, double p, double rate, Py_ssize_t nv)
{
    const float *x = self->samples[s];
    float *v = self->voice;
    Py_ssize_t i, last = (Py_ssize_t)self->len[s] - 1;
    if (rate == 1.0 && floor(p) == p) {
        memcpy(v, x + (Py_ssize_t)p, (size_t)nv * sizeof(float));
        return;
    }
    for (i = 0; i < nv; i++) {
        double at = p + rate * (double)i;     /* >= 0: truncation is the floor, and no libm call */
        Py_ssize_t j = (Py_ssize_t)at, j1;
        float frac = (float)(at - (double)j), a, b;
        if (j > last)            /* rounding at the very end: the last sample */
            j = last;
        j1 = j < last ? j + 1 : last;
        a = x[j];
        b = x[j1];
        v[i] = a + (b - a) * frac;
    }
}

/* The release envelope of the block's first ``nv`` samples into ``env``: from ``left`` of
 * ``length`` samples, linear, or the exponential (-60 dB shaped, 0 at its end) of it. */
static void release_envelope(Kernel *self, double left, double length, Py_ssize_t nv, int expo)
{
    float *e = self->env;
    double a = left / length, s = 1.0 / length, depth = self->depth;
    double floor_ = exp(-depth), scale = 1.0 / (1.0 - floor_);
    double lane[LANES], step;
    Py_ssize_t i, j;
    if (!expo) {
        for (i = 0; i < nv; i++) {
            double lin = a - s * (double)i;
            e[i] = (float)(lin <= 0.0 ? 0.0 : lin >= 1.0 ? 1.0 : lin);
        }
        return;
    }
    /* exp((lin - 1) depth) with lin = a - s i is exp((a - 1) depth) q^i, q = exp(-s depth):
     * LANES running products instead of an exp a sample */
    lane[0] = exp((a - 1.0) * depth);
    step = exp(-s * depth);
    for (j = 1; j < LANES; j++)
        lane[j] = lane[j - 1] * step;
    step = pow(step, LANES);
    for (i = 0; i < nv; i += LANES) {
        for (j = 0; j < LANES && i + j < nv; j++) {
            double lin = a - s * (double)(i + j), g;
            if (lin <= 0.0)
                g = 0.0;
            else if (lin >= 1.0)
                g = 1.0;
            else {
                g = (lane[j] - floor_) * scale;
                if (g < 0.0)
                    g = 0.0;
            }
            e[i + j] = (float)g;
            lane[j] *= step;
        }
    }
}

/* Adds the voice's block, gains ramping from (cl, cr) to (tl, tr) across the ``n`` frames. */
static void add_voice(Kernel *self, Py_ssize_t nv, Py_ssize_t n, double cl, double cr,
                      double tl, double tr)
{
    const float *v = self->voice, *ramp = self->ramp;
    float *left = self->lr, *right = self->lr + n;
    float l0 = (float)cl, r0 = (float)cr, dl = (float)(tl - cl), dr = (float)(tr - cr);
    Py_ssize_t i;
    if (dl == 0.0f && dr == 0.0f) {
        for (i = 0; i < nv; i++) {
            left[i] += l0 * v[i];
            right[i] += r0 * v[i];
        }
        return;
    }
    for (i = 0; i < nv; i++) {
        left[i] += (l0 + dl * ramp[i]) * v[i];
        right[i] += (r0 + dr * ramp[i]) * v[i];
    }
}

static void report(Kernel *self, Py_ssize_t *count, Py_ssize_t s, int kind)
{
    self->end_slot[*count] = s;
    self->end_kind[*count] = (int8_t)kind;
    (*count)++;
}

PyDoc_STRVAR(mix_doc,
"mix(n, exponential) -> int\n\n"
"Mixes every sounding voice's next ``n`` frames into lr[:2 n] (left, then right), advances\n"
"positions and releases, sets the gains reached (cur_l, cur_r), and writes to info the block's\n"
"peak (NaN when not finite), the voices mixed and those of them not fading.  Returns how many\n"
"slots end_slot/end_kind list to free: kind 1 ended (mixed this block), 2 and 3 bad (not mixed).");

static PyObject *Kernel_mix(Kernel *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t n, s, i, count = 0, sounding = 0, active = 0;
    int expo;
    float peak = 0.0f;
    int finite = 1;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "mix(n, exponential)");
        return NULL;
    }
    n = PyLong_AsSsize_t(args[0]);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    expo = PyObject_IsTrue(args[1]);
    if (expo < 0)
        return NULL;
    if (n < 0 || n > self->block) {
        PyErr_SetString(PyExc_ValueError, "mix: n outside 0 .. block");
        return NULL;
    }
    memset(self->lr, 0, 2 * (size_t)n * sizeof(float));
    for (s = 0; s < self->slots; s++) {
        int st = self->state[s], ch = self->channel[s], ended;
        double p = self->pos[s], rate = self->rate[s], length = self->len[s], g, tl, tr, left;
        Py_ssize_t nv;
        if (st == FREE)
            continue;
        ch = ch < 0 ? 0 : ch >= N_CHANNELS ? N_CHANNELS - 1 : ch;
        g = self->ch_gain[ch] * self->gain[s];
        tl = self->ch_pan_l[ch] * g;
        tr = self->ch_pan_r[ch] * g;
        /* NaN fails every comparison */
        if (!(st >= ACTIVE && st <= FADING && p >= 0.0 && p < length && rate > 0.001
              && rate < 100.0 && fabs(tl) < 1e4 && fabs(tr) < 1e4)) {
            report(self, &count, s, 2);
            continue;
        }
        if (!note_of(self, s) || length > (double)self->n_samples[s]) {
            report(self, &count, s, 3);
            continue;
        }
        left = floor((length - 1.0 - p) / rate) + 1.0;
        if (left <= 0.0) {       /* a bent voice past its last sample: it is over */
            report(self, &count, s, 1);
            continue;
        }
        nv = left < (double)n ? (Py_ssize_t)left : n;
        read_voice(self, s, p, rate, nv);
        if (st != ACTIVE) {
            release_envelope(self, self->rel_left[s], self->rel_len[s], nv, expo);
            for (i = 0; i < nv; i++)
                self->voice[i] *= self->env[i];
        }
        add_voice(self, nv, n, self->cur_l[s], self->cur_r[s], tl, tr);
        self->cur_l[s] = tl;
        self->cur_r[s] = tr;
        self->pos[s] = rate * (double)n + p;
        ended = nv < n || self->pos[s] > length - 1.0;   /* nothing left for the next block */
        if (st != ACTIVE) {
            self->rel_left[s] -= (double)n;
            ended = ended || self->rel_left[s] <= 0.0;
        }
        sounding++;
        active += st != FADING;
        if (ended)
            report(self, &count, s, 1);
    }
    for (i = 0; i < 2 * n; i++) {
        float a = fabsf(self->lr[i]);
        if (a > peak)
            peak = a;
        finite &= a <= 3.4e38f;  /* false for inf and NaN */
    }
    self->info[0] = finite ? (double)peak : NAN;
    self->info[1] = (double)sounding;
    self->info[2] = (double)active;
    return PyLong_FromSsize_t(count);
}

PyDoc_STRVAR(finish_doc,
"finish(n, a, b, threshold)\n\n"
"lr[:2 n] times the gain a + b ramp[i]; then, if threshold is in (0, 1), the soft knee above it\n"
"(t + (1 - t) tanh((|x| - t) / (1 - t))) and a clip to [-1, 1].");

static PyObject *Kernel_finish(Kernel *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t n, i, c;
    double a, b, t;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "finish(n, a, b, threshold)");
        return NULL;
    }
    n = PyLong_AsSsize_t(args[0]);
    a = PyFloat_AsDouble(args[1]);
    b = PyFloat_AsDouble(args[2]);
    t = PyFloat_AsDouble(args[3]);
    if (PyErr_Occurred())
        return NULL;
    if (n < 0 || n > self->block) {
        PyErr_SetString(PyExc_ValueError, "finish: n outside 0 .. block");
        return NULL;
    }
    for (c = 0; c < 2; c++) {
        float *x = self->lr + c * n, fa = (float)a, fb = (float)b;
        if (fb == 0.0f) {
            for (i = 0; i < n; i++)
                x[i] *= fa;
        } else {
            for (i = 0; i < n; i++)
                x[i] *= fa + fb * self->ramp[i];
        }
        if (t > 0.0 && t < 1.0) {
            float ft = (float)t, width = (float)(1.0 - t), inv = (float)(1.0 / (1.0 - t));
            for (i = 0; i < n; i++) {
                float ax = fabsf(x[i]), over = ax - ft, y;
                over = over > 0.0f ? over * inv : 0.0f;
                y = (ax < ft ? ax : ft) + width * tanhf(over);
                y = y < 1.0f ? y : 1.0f;
                x[i] = copysignf(y, x[i]);
            }
        }
    }
    Py_RETURN_NONE;
}

static PyMethodDef Kernel_methods[] = {
    {"mix", (PyCFunction)(void (*)(void))Kernel_mix, METH_FASTCALL, mix_doc},
    {"finish", (PyCFunction)(void (*)(void))Kernel_finish, METH_FASTCALL, finish_doc},
    {NULL, NULL, 0, NULL}
};

PyDoc_STRVAR(Kernel_doc,
"Kernel(slots, block, notes, arrays)\n\n"
"Bound to a `Mixer`'s voice table: ``notes`` its list of note arrays, ``arrays`` the tuple\n"
"(state, pos, len, rate, gain, cur_l, cur_r, channel, rel_len, rel_left, gen, ch_gain,\n"
"ch_pan_l, ch_pan_r, lr, ramp, end_slot, end_kind, info), held until the kernel is freed.");

static PyTypeObject KernelType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    "sing_synth.engine._mixc.Kernel",   /* tp_name */
    sizeof(Kernel),                     /* tp_basicsize */
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_mixc", "The mixer's compiled block (see Kernel).", -1, NULL,
};

PyMODINIT_FUNC PyInit__mixc(void)
{
    PyObject *m;
    KernelType.tp_dealloc = (destructor)Kernel_dealloc;
    KernelType.tp_flags = Py_TPFLAGS_DEFAULT;
    KernelType.tp_doc = Kernel_doc;
    KernelType.tp_methods = Kernel_methods;
    KernelType.tp_init = (initproc)Kernel_init;
    KernelType.tp_new = PyType_GenericNew;
    if (PyType_Ready(&KernelType) < 0)
        return NULL;
    m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&KernelType);
    if (PyModule_AddObject(m, "Kernel", (PyObject *)&KernelType) < 0) {
        Py_DECREF(&KernelType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
