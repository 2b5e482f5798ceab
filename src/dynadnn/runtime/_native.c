/* The manager's per-inference path in C: the latency monitor and the `feedback` control law.

   Why native: right after an inference the caches are cold, and interpreted Python then costs about a
   microsecond per line (measured in the serving loop here: the 15-line monitor update alone took 13-20 us,
   the feedback step 35-45 us at the median and ~110 us at p99). The same logic as one C call costs a few
   microseconds. The Python classes (`monitors.LatencyMonitor`, `policies.feedback.FeedbackPolicy`) stay
   the reference: this file mirrors them statement by statement, in the same floating-point order, and a
   test feeds both the same random streams and requires identical decisions.

   Types:
     LatencyMonitorCore(size=64, alpha=0.1)   update(latency_ms, profiled_p50_ms, deadline_ms)
     FeedbackCore(..., params=FeedbackParams) step(t, latency_ms, option, targets, system=None) -> int
     ServingCore(...)                         predict(x): runner, clock, monitor, policy, records
   ServingCore is `serving.PyServing` in C: with it the manager's whole per-inference path runs without
   interpreting a line of Python unless the policy is a Python one or the option changes. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <limits.h>
#include <math.h>
#include <string.h>
#include <time.h>

#define MAX_CTX 16
#define NONE_T (-1e300) /* "no time recorded" for up_since / slack_since (Python: None) */

static PyObject *str_ok, *str_n_cpus, *str_others_busy, *str_effective;

/* ---------------------------------------------------------------------------------------------------- */
/* LatencyMonitorCore                                                                                  */

typedef struct {
    PyObject_HEAD
    int size, pos, count, missed_in;
    double alpha, ewma_ms, ewma_slowdown;
    long long n, n_missed;
    double *lat;
    unsigned char *miss;
} MonitorObject;

static PyTypeObject MonitorType;

static void monitor_update(MonitorObject *m, double lat, double p50, double deadline) {
    int pos = m->pos;
    int missed = lat > deadline;
    if (m->count == m->size)
        m->missed_in += missed - m->miss[pos];
    else
        m->missed_in += missed;
    m->lat[pos] = lat;
    m->miss[pos] = (unsigned char)missed;
    m->pos = pos + 1 < m->size ? pos + 1 : 0;
    if (m->count < m->size) m->count++;
    m->n_missed += missed;
    double ratio = p50 > 0.0 ? lat / p50 : 1.0;
    if (m->n) {
        m->ewma_ms += m->alpha * (lat - m->ewma_ms);
        m->ewma_slowdown += m->alpha * (ratio - m->ewma_slowdown);
    } else {
        m->ewma_ms = lat;
        m->ewma_slowdown = ratio;
    }
    m->n++;
}

static int monitor_init(MonitorObject *m, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"size", "alpha", NULL};
    int size = 64;
    double alpha = 0.1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|id", kwlist, &size, &alpha)) return -1;
    if (size < 1) {
        PyErr_SetString(PyExc_ValueError, "window size must be >= 1");
        return -1;
    }
    PyMem_Free(m->lat);
    m->lat = PyMem_Calloc(1, (size_t)size * (sizeof(double) + 1)); /* one block: latencies, then miss flags */
    m->miss = m->lat ? (unsigned char *)(m->lat + size) : NULL;
    if (!m->lat) {
        PyErr_NoMemory();
        return -1;
    }
    m->size = size;
    m->alpha = alpha;
    m->pos = m->count = m->missed_in = 0;
    m->n = m->n_missed = 0;
    m->ewma_ms = 0.0;
    m->ewma_slowdown = 1.0;
    return 0;
}

static void monitor_dealloc(MonitorObject *m) {
    PyMem_Free(m->lat);
    Py_TYPE(m)->tp_free((PyObject *)m);
}

static int as_double(PyObject *o, double *out) {
    *out = PyFloat_AsDouble(o);
    return !(*out == -1.0 && PyErr_Occurred());
}

static PyObject *monitor_update_py(MonitorObject *m, PyObject *const *args, Py_ssize_t nargs) {
    double lat, p50, deadline;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "update(latency_ms, profiled_p50_ms, deadline_ms)");
        return NULL;
    }
    if (!as_double(args[0], &lat) || !as_double(args[1], &p50) || !as_double(args[2], &deadline)) return NULL;
    monitor_update(m, lat, p50, deadline);
    Py_RETURN_NONE;
}

static PyObject *monitor_window(MonitorObject *m, PyObject *unused) {
    PyObject *out = PyList_New(m->count);
    if (!out) return NULL;
    for (int i = 0; i < m->count; i++) {
        PyObject *v = PyFloat_FromDouble(m->lat[i]);
        if (!v) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, v);
    }
    return out;
}

static PyMethodDef monitor_methods[] = {
    {"update", (PyCFunction)(void (*)(void))monitor_update_py, METH_FASTCALL,
     "update(latency_ms, profiled_p50_ms, deadline_ms): one inference's latency"},
    {"window", (PyCFunction)monitor_window, METH_NOARGS, "the latencies in the window (ring order)"},
    {NULL}};

static PyMemberDef monitor_members[] = {
    {"size", T_INT, offsetof(MonitorObject, size), READONLY, NULL},
    {"count", T_INT, offsetof(MonitorObject, count), READONLY, NULL},
    {"alpha", T_DOUBLE, offsetof(MonitorObject, alpha), READONLY, NULL},
    {"ewma_ms", T_DOUBLE, offsetof(MonitorObject, ewma_ms), READONLY, NULL},
    {"ewma_slowdown", T_DOUBLE, offsetof(MonitorObject, ewma_slowdown), READONLY, NULL},
    {"n", T_LONGLONG, offsetof(MonitorObject, n), READONLY, NULL},
    {"n_missed", T_LONGLONG, offsetof(MonitorObject, n_missed), READONLY, NULL},
    {"_missed_in", T_INT, offsetof(MonitorObject, missed_in), READONLY, NULL},
    {NULL}};

static PyTypeObject MonitorType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "dynadnn.runtime._native.LatencyMonitorCore",
    .tp_basicsize = sizeof(MonitorObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Windowed latency, deadline misses and EWMAs (see monitors.LatencyMonitor).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)monitor_init,
    .tp_dealloc = (destructor)monitor_dealloc,
    .tp_methods = monitor_methods,
    .tp_members = monitor_members,
};

/* ---------------------------------------------------------------------------------------------------- */
/* FeedbackCore                                                                                        */

#define VERIFY_WINDOWS 3 /* as feedback.VERIFY_WINDOWS: a step down is judged on this many windows of frames */

typedef struct {
    double *values, *ordered;
    int pos, count;
} SortedWindow;

static void window_push(SortedWindow *w, int size, double value) {
    int n;
    if (w->count == size) { /* drop the value leaving the ring: bisect_left finds it */
        double old = w->values[w->pos];
        int lo = 0, hi = size;
        while (lo < hi) {
            int mid = (lo + hi) / 2;
            if (w->ordered[mid] < old) lo = mid + 1; else hi = mid;
        }
        memmove(w->ordered + lo, w->ordered + lo + 1, (size_t)(size - lo - 1) * sizeof(double));
        n = size - 1;
    } else {
        n = w->count;
        w->count++;
    }
    int lo = 0, hi = n; /* insort (right) */
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (value < w->ordered[mid]) hi = mid; else lo = mid + 1;
    }
    memmove(w->ordered + lo + 1, w->ordered + lo, (size_t)(n - lo) * sizeof(double));
    w->ordered[lo] = value;
    w->values[w->pos] = value;
    w->pos = w->pos + 1 < size ? w->pos + 1 : 0;
}

typedef struct {
    PyObject_HEAD
    int n_opt, n_ctx, wsize, min_samples;
    double miss_budget, miss_conf, margin, up_hyst, stale_s, dwell_s, min_dwell_s, probe_s, probe_slack, sync_penalty;
    double up_fail_s, backoff_max_s, down_block_s;
    /* per option (index), per rank (accuracy order), per context */
    double *p50, *inv_p50, *p50_by_rank;
    int *ctx_of, *order, *rank, *ctx_by_rank;
    int *down_k, *up_k; /* per window count 0..wsize: miss_allowances (policies/feedback.py) */
    int ctx_threads[MAX_CTX];
    double idle_tail[MAX_CTX], ref_p50[MAX_CTX], last_seen[MAX_CTX];
    int win_opt[MAX_CTX]; /* the option whose ratios a context's window holds (-1: none yet) */
    SortedWindow win[MAX_CTX];
    /* control state */
    int current, probing, active;
    double last_switch_t, up_since, slack_since, probe_wait;
    double up_wait, last_up_t; /* the dwell an upward move needs now (doubles after a reversed one), when the last was */
    int verify_opt, since, since_late; /* the option a step down left (-1: none); frames since the last switch, late ones */
    double verify_rate, block_until, down_block; /* its misses per frame then; steps down held until; next hold */
    /* prepared at the last switch / target change */
    PyObject *tg;
    int hold_k, late_run; /* late_run: the current option's latest frames in a row over the deadline */
    double hold_until, deadline, budget, up_budget, p50_cur, late_ratio;
    double better_min[MAX_CTX];
    unsigned char has_better[MAX_CTX];
    /* what the last system sample said (samples are immutable: read each one once) */
    PyObject *sample_seen;
    int sample_known;
    double sample_free;
    void *block; /* every array above lives in this one allocation: few pages to touch per frame */
} CoreObject;

static PyTypeObject CoreType;

static int prepare(CoreObject *s, PyObject *targets) {
    if (targets != s->tg) { /* Targets are frozen: the same object has the same deadline */
        Py_INCREF(targets); /* first: the call below runs Python, and another thread may drop the caller's */
        PyObject *d = PyObject_CallMethodNoArgs(targets, str_effective);
        double deadline = d ? PyFloat_AsDouble(d) : -1.0;
        Py_XDECREF(d);
        if (deadline == -1.0 && PyErr_Occurred()) {
            Py_DECREF(targets);
            return -1;
        }
        Py_XSETREF(s->tg, targets);
        s->deadline = deadline;
    }
    double deadline = s->deadline;
    s->hold_k = 0;
    s->late_run = 0;
    s->since = s->since_late = 0;
    s->hold_until = -1e18;
    s->budget = deadline / (1.0 + s->margin);
    s->up_budget = deadline / (1.0 + s->margin + s->up_hyst);
    s->active = s->ctx_of[s->current];
    s->p50_cur = s->p50[s->current];
    s->late_ratio = s->p50_cur > 0.0 ? deadline / s->p50_cur : INFINITY; /* a ratio above: a miss */
    for (int c = 0; c < s->n_ctx; c++) s->has_better[c] = 0;
    for (int r = 0; r < s->rank[s->current]; r++) {
        int c = s->ctx_by_rank[r];
        double p = s->p50_by_rank[r];
        if (!s->has_better[c] || p < s->better_min[c]) {
            s->better_min[c] = p;
            s->has_better[c] = 1;
        }
    }
    return 0;
}

/* (m, e) from a context's own window, or the idle profile */
static void own(CoreObject *s, int c, double *m, double *e) {
    SortedWindow *w = &s->win[c];
    int n = w->count;
    if (n < s->min_samples) {
        *m = 1.0;
        *e = (s->idle_tail[c] - 1.0) * s->ref_p50[c];
        return;
    }
    *m = w->ordered[n / 2];
    *e = (w->ordered[(int)(0.95 * n)] - *m) * s->ref_p50[c];
}

/* sync penalty for running context c beside what the system monitor saw; -1 on error */
static double penalty(CoreObject *s, int c, PyObject *system) {
    int th = s->ctx_threads[c];
    if (th <= 1) return 1.0;
    if (system != s->sample_seen) {
        int known = 0;
        double free = 0.0;
        if (system != Py_None) {
            PyObject *ok = PyObject_GetAttr(system, str_ok);
            if (!ok) return -1.0;
            int truth = PyObject_IsTrue(ok);
            Py_DECREF(ok);
            if (truth < 0) return -1.0;
            if (truth) {
                PyObject *nc = PyObject_GetAttr(system, str_n_cpus);
                if (!nc) return -1.0;
                PyObject *ob = PyObject_GetAttr(system, str_others_busy);
                if (!ob) {
                    Py_DECREF(nc);
                    return -1.0;
                }
                double a = PyFloat_AsDouble(nc), b = PyFloat_AsDouble(ob);
                Py_DECREF(nc);
                Py_DECREF(ob);
                if (PyErr_Occurred()) return -1.0;
                free = a - b;
                known = 1;
            }
        }
        Py_INCREF(system);
        Py_XSETREF(s->sample_seen, system);
        s->sample_known = known;
        s->sample_free = free;
    }
    return (!s->sample_known || th > s->sample_free + 0.25) ? s->sync_penalty : 1.0;
}

/* A context's model: p95(o) = (p50(o) x m + e) x f, and each ratio r of window `src` (-1: none yet, the
   idle profile) predicts (p50(o) x m + (r - m) x ref_p50[src]) x f. */
typedef struct {
    double m[MAX_CTX], e[MAX_CTX], f[MAX_CTX];
    int src[MAX_CTX];
} Models;

static int src_of(CoreObject *s, int c) { return s->win[c].count >= s->min_samples ? c : -1; }

static int models(CoreObject *s, double t, PyObject *system, Models *md) {
    int a = s->active;
    own(s, a, &md->m[a], &md->e[a]);
    md->f[a] = 1.0;
    md->src[a] = src_of(s, a);
    for (int c = 0; c < s->n_ctx; c++) {
        if (c == a) continue;
        if (s->win[c].count >= s->min_samples && t - s->last_seen[c] <= s->stale_s) {
            own(s, c, &md->m[c], &md->e[c]);
            md->f[c] = 1.0;
            md->src[c] = c;
        } else {
            md->m[c] = md->m[a];
            md->e[c] = md->e[a];
            md->src[c] = md->src[a];
            md->f[c] = penalty(s, c, system);
            if (md->f[c] < 0) return -1;
        }
    }
    return 0;
}

/* how many of the window's values exceed x: n - bisect_right */
static int count_above(const SortedWindow *w, double x) {
    int lo = 0, hi = w->count;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (x < w->ordered[mid]) hi = mid; else lo = mid + 1;
    }
    return w->count - lo;
}

/* how many of window src's ratios predict an option of median p50 over `limit` ms (src >= 0) */
static int misses(CoreObject *s, double m, double f, int src, double p50, double limit) {
    double lim = f > 0.0 ? limit / f : INFINITY;
    double ref = s->ref_p50[src];
    if (ref <= 0.0) ref = 1.0;
    return count_above(&s->win[src], m + (lim - p50 * m) / ref);
}

/* is an option of median p50 predicted over `limit` ms on fewer than allow[n] of the n window ratios? */
static int fits(CoreObject *s, double m, double e, double f, int src, double p50, double limit, const int *allow) {
    if (src < 0) return (p50 * m + e) * f <= limit;
    return misses(s, m, f, src, p50, limit) < allow[s->win[src].count];
}

static int first_fitting(CoreObject *s, const Models *md, double limit, const int *allow, int upto) {
    for (int r = 0; r < upto; r++) {
        int c = s->ctx_by_rank[r];
        if (fits(s, md->m[c], md->e[c], md->f[c], md->src[c], s->p50_by_rank[r], limit, allow)) return r;
    }
    return -1;
}

static int do_switch(CoreObject *s, int option, double t, PyObject *targets) {
    s->current = option;
    s->last_switch_t = t;
    s->up_since = NONE_T;
    s->slack_since = NONE_T;
    return prepare(s, targets) < 0 ? -1 : option;
}

static int go_down(CoreObject *s, double t, int late, PyObject *system) {
    int n = s->win[s->active].count;
    if (t < s->block_until && s->late_run < s->down_k[n]) { /* a step down just failed: hold */
        s->hold_k = late;
        s->hold_until = t + 0.1;
        return s->current;
    }
    Models md;
    if (models(s, t, system, &md) < 0) return -1;
    const double *m = md.m, *e = md.e, *f = md.f;
    int r = first_fitting(s, &md, s->budget, s->down_k, s->n_opt);
    int choice;
    if (r >= 0) {
        choice = s->order[r];
    } else if (md.src[s->active] >= 0 && s->late_run < s->down_k[n]) {
        /* nothing fits, the misses are scattered: the fewest predicted misses, if it halves ours */
        choice = s->current;
        int best = late / 2 + 1;
        for (int q = 0; q < s->n_opt; q++) {
            int c = s->ctx_by_rank[q];
            int k = misses(s, m[c], f[c], md.src[c], s->p50_by_rank[q], s->deadline);
            if (k < best) {
                best = k;
                choice = s->order[q];
            }
        }
    } else { /* no window yet, or a sustained slowdown: the option predicted fastest */
        choice = 0;
        double best = 0.0;
        for (int i = 0; i < s->n_opt; i++) {
            int c = s->ctx_of[i];
            double p = (s->p50[i] * m[c] + e[c]) * f[c];
            if (i == 0 || p < best) {
                best = p;
                choice = i;
            }
        }
    }
    if (choice != s->current) { /* down: right after an upward move, that move failed: the next waits twice as long */
        s->up_wait = t - s->last_up_t <= s->up_fail_s ? fmin(2.0 * s->up_wait, s->backoff_max_s) : s->dwell_s;
        /* measured misses (a window): verify the step; from the idle profile there is nothing to compare with */
        if (s->verify_opt < 0) { /* against the option the first step of a cascade left */
            s->verify_opt = n >= s->min_samples ? s->current : -1;
            s->verify_rate = n >= s->min_samples ? (double)late / n : 0.0;
        }
        return do_switch(s, choice, t, s->tg);
    }
    s->hold_k = late; /* already on the best we have: search again after one more miss or after 0.1 s */
    s->hold_until = t + 0.1;
    return s->current;
}

/* does the fastest more accurate option of some context fit the upward limit? (m, e, src: the running
   context c's model); 1 yes, 0 no, -1 error */
static int up_fits(CoreObject *s, int c, double m, double e, int src, double t, PyObject *system) {
    for (int u = 0; u < s->n_ctx; u++) {
        if (!s->has_better[u]) continue;
        double mu = m, eu = e, fu = 1.0;
        int su = src;
        if (u != c) {
            if (s->win[u].count >= s->min_samples && t - s->last_seen[u] <= s->stale_s) {
                own(s, u, &mu, &eu);
                su = src_of(s, u);
            } else if ((fu = penalty(s, u, system)) < 0) {
                return -1;
            }
        }
        if (fits(s, mu, eu, fu, su, s->better_min[u], s->up_budget, s->up_k)) return 1;
    }
    return 0;
}

/* the probe (slack persists but the model forbids going up): one step up if it may */
static int probe(CoreObject *s, double t, double pred, PyObject *targets, PyObject *system) {
    if (pred <= s->probe_slack * s->deadline && s->rank[s->current] > 0) {
        if (s->slack_since == NONE_T) {
            s->slack_since = t;
        } else if (t - s->slack_since >= s->probe_wait && t - s->last_switch_t >= s->min_dwell_s) {
            int nxt = s->order[s->rank[s->current] - 1];
            Models md;
            if (models(s, t, system, &md) < 0) return -1;
            int cn = s->ctx_of[nxt];
            if ((s->p50[nxt] * md.m[cn] + md.e[cn]) * md.f[cn] <= s->deadline) {
                s->probing = 1;
                s->verify_opt = -1;
                return do_switch(s, nxt, t, targets);
            }
        }
    } else {
        s->slack_since = NONE_T;
    }
    return s->current;
}

static int step(CoreObject *s, double t, double lat, int option, PyObject *targets, PyObject *system) {
    int c = s->ctx_of[option];
    if (targets != s->tg || option != s->current) {
        s->current = option; /* (the manager ran something else: a fall-back) */
        if (prepare(s, targets) < 0) return -1;
    }
    SortedWindow *w = &s->win[c];
    if (s->win_opt[c] != option) { /* another option: the window's ratios re-expressed in its terms */
        int prev = s->win_opt[c];
        if (prev >= 0 && w->count > 0 && s->p50[option] > 0.0) {
            double m = w->ordered[w->count / 2], k = s->p50[prev] / s->p50[option];
            for (int i = 0; i < w->count; i++) { /* the first `count` ring slots are the valid ones */
                w->values[i] = m + (w->values[i] - m) * k;
                w->ordered[i] = m + (w->ordered[i] - m) * k;
            }
        }
        s->win_opt[c] = option;
    }
    window_push(w, s->wsize, lat * s->inv_p50[option]);
    s->ref_p50[c] = s->p50[option];
    s->last_seen[c] = t;
    s->late_run = lat > s->deadline ? s->late_run + 1 : 0;
    if (s->probing && lat > s->deadline) { /* a probe that misses: back off, go down at once */
        s->probing = 0;
        s->probe_wait *= 2.0;
    }
    int n = w->count, late = 0, down;
    double p50c = s->p50_cur, m, pred;
    if (n >= s->min_samples) {
        m = w->ordered[n / 2];
        pred = w->ordered[(int)(0.95 * n)] * p50c;
        late = count_above(w, s->late_ratio); /* the current option's misses in the window */
        down = late >= s->down_k[n];
    } else {
        m = 1.0;
        pred = s->idle_tail[c] * p50c;
        down = pred > s->budget;
    }
    s->since++;
    s->since_late += lat > s->deadline;
    if (s->verify_opt >= 0 && s->since >= VERIFY_WINDOWS * s->wsize) { /* a step down shows its gain */
        int prev = s->verify_opt;
        s->verify_opt = -1;
        if (2 * s->since_late >= s->verify_rate * s->since) { /* not half as many misses: no real gain */
            s->block_until = t + s->down_block;
            s->down_block = fmin(2.0 * s->down_block, s->backoff_max_s);
            return do_switch(s, prev, t, targets);
        }
        s->down_block = s->down_block_s;
    }
    if (down) {
        if (late > s->hold_k || t >= s->hold_until) return go_down(s, t, late, system);
        return s->current;
    }
    double e = pred - m * p50c;
    int up = up_fits(s, c, m, e, n >= s->min_samples ? c : -1, t, system);
    if (up < 0) return -1;
    if (up) { /* upward: a more accurate option fits -> after a dwell */
        if (s->up_since == NONE_T) s->up_since = t;
        if (t - s->up_since >= s->up_wait && t - s->last_switch_t >= s->min_dwell_s) {
            Models md;
            if (models(s, t, system, &md) < 0) return -1;
            int r = first_fitting(s, &md, s->up_budget, s->up_k, s->rank[s->current]);
            if (r >= 0) {
                s->probe_wait = s->probe_s;
                s->last_up_t = t;
                s->verify_opt = -1;
                return do_switch(s, s->order[r], t, targets);
            }
        }
        return s->current;
    }
    s->up_since = NONE_T;
    return probe(s, t, pred, targets, system);
}

/* an option index from Python, range-checked; -1 with an exception set otherwise */
static int option_index(PyObject *value, int n_opt) {
    long v = value ? PyLong_AsLong(value) : -1;
    if (v == -1 && PyErr_Occurred()) return -1;
    if (v < 0 || v >= n_opt) {
        PyErr_Format(PyExc_IndexError, "option %ld out of range (0..%d)", v, n_opt - 1);
        return -1;
    }
    return (int)v;
}

static PyObject *core_step(CoreObject *s, PyObject *const *args, Py_ssize_t nargs) {
    double t, lat;
    if (nargs < 4 || nargs > 5) {
        PyErr_SetString(PyExc_TypeError, "step(t, latency_ms, option, targets, system=None)");
        return NULL;
    }
    if (!as_double(args[0], &t) || !as_double(args[1], &lat)) return NULL;
    int option = option_index(args[2], s->n_opt);
    if (option < 0) return NULL;
    int r = step(s, t, lat, option, args[3], nargs == 5 ? args[4] : Py_None);
    return r < 0 ? NULL : PyLong_FromLong(r);
}

static PyObject *core_force(CoreObject *s, PyObject *arg) {
    int option = option_index(arg, s->n_opt);
    if (option < 0) return NULL;
    s->current = option;
    s->up_since = NONE_T;
    s->slack_since = NONE_T;
    if (prepare(s, s->tg) < 0) return NULL;
    Py_RETURN_NONE;
}

/* n numbers from a Python sequence into `d` (floats) or `i` (ints), whichever is not NULL */
static int read_numbers(PyObject *seq, int n, double *d, int *i, const char *what) {
    PyObject *fast = PySequence_Fast(seq, what);
    if (!fast) return -1;
    int ok = PySequence_Fast_GET_SIZE(fast) == n;
    if (!ok) PyErr_Format(PyExc_ValueError, "%s: expected %d values", what, n);
    for (int k = 0; ok && k < n; k++) {
        PyObject *item = PySequence_Fast_GET_ITEM(fast, k);
        if (d) d[k] = PyFloat_AsDouble(item);
        else i[k] = (int)PyLong_AsLong(item);
        ok = !PyErr_Occurred();
    }
    Py_DECREF(fast);
    return ok ? 0 : -1;
}

static int read_doubles(PyObject *seq, int n, double *out, const char *what) {
    return read_numbers(seq, n, out, NULL, what);
}

static int read_ints(PyObject *seq, int n, int *out, const char *what) {
    return read_numbers(seq, n, NULL, out, what);
}

static void core_free_arrays(CoreObject *s) {
    PyMem_Free(s->block);
    s->block = NULL;
    s->p50 = s->inv_p50 = s->p50_by_rank = NULL;
    s->ctx_of = s->order = s->rank = s->ctx_by_rank = s->down_k = s->up_k = NULL;
    for (int c = 0; c < MAX_CTX; c++) s->win[c].values = s->win[c].ordered = NULL;
}

static int core_alloc_arrays(CoreObject *s, int n, int n_ctx, int wsize) {
    size_t doubles = 3 * (size_t)n + 2 * (size_t)n_ctx * (size_t)wsize;
    double *d = PyMem_Calloc(1, doubles * sizeof(double) + (4 * (size_t)n + 2 * ((size_t)wsize + 1)) * sizeof(int));
    if (!d) {
        PyErr_NoMemory();
        return -1;
    }
    s->block = d;
    s->p50 = d;
    s->inv_p50 = d + n;
    s->p50_by_rank = d + 2 * n;
    double *w = d + 3 * n;
    for (int c = 0; c < n_ctx; c++) {
        s->win[c].values = w + (size_t)(2 * c) * wsize;
        s->win[c].ordered = w + (size_t)(2 * c + 1) * wsize;
        s->win[c].pos = s->win[c].count = 0;
    }
    int *i = (int *)(d + doubles);
    s->ctx_of = i;
    s->order = i + n;
    s->rank = i + 2 * n;
    s->ctx_by_rank = i + 3 * n;
    s->down_k = i + 4 * n;
    s->up_k = s->down_k + wsize + 1;
    return 0;
}

/* The feedback law's parameters, read by name from a `policies.feedback.FeedbackParams` record: the names
   and types here are its fields (a test checks them against FEEDBACK_PARAMS); the defaults live only there. */
typedef struct {
    const char *name;
    char type; /* 'i' int, 'd' double */
    size_t offset;
} ParamField;

static const ParamField PARAMS[] = {
    {"miss_budget", 'd', offsetof(CoreObject, miss_budget)}, {"miss_confidence", 'd', offsetof(CoreObject, miss_conf)},
    {"margin", 'd', offsetof(CoreObject, margin)},           {"up_hysteresis", 'd', offsetof(CoreObject, up_hyst)},
    {"window", 'i', offsetof(CoreObject, wsize)},            {"min_samples", 'i', offsetof(CoreObject, min_samples)},
    {"stale_s", 'd', offsetof(CoreObject, stale_s)},         {"dwell_s", 'd', offsetof(CoreObject, dwell_s)},
    {"min_dwell_s", 'd', offsetof(CoreObject, min_dwell_s)}, {"probe_s", 'd', offsetof(CoreObject, probe_s)},
    {"probe_slack", 'd', offsetof(CoreObject, probe_slack)}, {"sync_penalty", 'd', offsetof(CoreObject, sync_penalty)},
    {"up_fail_s", 'd', offsetof(CoreObject, up_fail_s)},     {"backoff_max_s", 'd', offsetof(CoreObject, backoff_max_s)},
    {"down_block_s", 'd', offsetof(CoreObject, down_block_s)},
    {NULL, 0, 0}};

/* every field of PARAMS from the record's attributes into the struct; validation only, no defaults */
static int read_params(CoreObject *s, PyObject *params) {
    for (const ParamField *f = PARAMS; f->name; f++) {
        PyObject *v = PyObject_GetAttrString(params, f->name);
        if (!v) return -1;
        char *field = (char *)s + f->offset;
        if (f->type == 'i') {
            long x = PyLong_AsLong(v);
            if (!(x == -1 && PyErr_Occurred()) && (x < 1 || x > INT_MAX))
                PyErr_Format(PyExc_ValueError, "FeedbackCore: %s must be in 1..%d, got %ld", f->name, INT_MAX, x);
            *(int *)field = (int)x;
        } else {
            *(double *)field = PyFloat_AsDouble(v);
        }
        Py_DECREF(v);
        if (PyErr_Occurred()) return -1;
    }
    if (!(s->miss_budget >= 0.0 && s->miss_budget < 1.0) || !(s->miss_conf > 0.0 && s->miss_conf < 1.0)) {
        char msg[160];
        snprintf(msg, sizeof msg, "FeedbackCore: need 0 <= miss_budget < 1 and 0 < miss_confidence < 1, got %g, %g",
                 s->miss_budget, s->miss_conf);
        PyErr_SetString(PyExc_ValueError, msg);
        return -1;
    }
    return 0;
}

/* down_k[n], up_k[n] for n = 0..wsize: as `policies.feedback.miss_allowances`, operation for operation */
static void miss_allowances(CoreObject *s) {
    double q = s->miss_budget, alpha = 1.0 - s->miss_conf;
    for (int n = 0; n <= s->wsize; n++) {
        double p = 1.0, tail = 1.0;
        for (int j = 0; j < n; j++) p *= 1.0 - q; /* P(K = 0) */
        int k = 0;
        while (k <= n && tail > alpha) {
            tail -= p;
            p *= (double)(n - k) / (double)(k + 1) * q / (1.0 - q);
            k++;
        }
        s->down_k[n] = k;
        s->up_k[n] = k > 2 ? k - 1 : 1;
    }
}

/* the per-option arrays from Python sequences; order must be a permutation, ctx_of in range */
static int read_options(CoreObject *s, PyObject *p50, PyObject *ctx_of, PyObject *ctx_threads, PyObject *order,
                        PyObject *idle_tail) {
    if (read_doubles(p50, s->n_opt, s->p50, "p50") < 0 || read_ints(ctx_of, s->n_opt, s->ctx_of, "ctx_of") < 0 ||
        read_ints(ctx_threads, s->n_ctx, s->ctx_threads, "ctx_threads") < 0 ||
        read_ints(order, s->n_opt, s->order, "order") < 0 ||
        read_doubles(idle_tail, s->n_ctx, s->idle_tail, "idle_tail") < 0)
        return -1;
    for (int i = 0; i < s->n_opt; i++) s->rank[i] = -1;
    for (int r = 0; r < s->n_opt; r++) {
        int i = s->order[r];
        if (i < 0 || i >= s->n_opt || s->rank[i] >= 0) {
            PyErr_SetString(PyExc_ValueError, "order: expected a permutation of the option indices");
            return -1;
        }
        s->rank[i] = r;
    }
    for (int i = 0; i < s->n_opt; i++) {
        if (s->ctx_of[i] < 0 || s->ctx_of[i] >= s->n_ctx) {
            PyErr_SetString(PyExc_ValueError, "ctx_of: context index out of range");
            return -1;
        }
        s->inv_p50[i] = s->p50[i] > 0.0 ? 1.0 / s->p50[i] : 0.0;
    }
    for (int r = 0; r < s->n_opt; r++) {
        s->p50_by_rank[r] = s->p50[s->order[r]];
        s->ctx_by_rank[r] = s->ctx_of[s->order[r]];
    }
    return 0;
}

static int core_init(CoreObject *s, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"p50", "ctx_of", "ctx_threads", "order", "idle_tail", "params", "current", "targets",
                             NULL};
    PyObject *p50, *ctx_of, *ctx_threads, *order, *idle_tail, *params, *targets;
    int current;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOOiO", kwlist, &p50, &ctx_of, &ctx_threads, &order, &idle_tail,
                                     &params, &current, &targets))
        return -1;
    Py_ssize_t n = PyObject_Length(p50), nc = PyObject_Length(ctx_threads);
    if (n < 0 || nc < 0) return -1;
    if (n < 1 || nc < 1 || nc > MAX_CTX) {
        PyErr_Format(PyExc_ValueError, "FeedbackCore: need >= 1 option and 1..%d contexts", MAX_CTX);
        return -1;
    }
    core_free_arrays(s);
    s->n_opt = 0; /* until it is whole again, step and force refuse every option */
    if (read_params(s, params) < 0) return -1;
    s->n_opt = (int)n;
    s->n_ctx = (int)nc;
    if (core_alloc_arrays(s, s->n_opt, s->n_ctx, s->wsize) < 0) return -1;
    miss_allowances(s);
    if (read_options(s, p50, ctx_of, ctx_threads, order, idle_tail) < 0) return -1;
    if (current < 0 || current >= s->n_opt) {
        PyErr_SetString(PyExc_ValueError, "current: option index out of range");
        return -1;
    }
    for (int c = 0; c < s->n_ctx; c++) {
        s->ref_p50[c] = 1.0;
        s->last_seen[c] = -1e18;
        s->win_opt[c] = -1;
        s->win[c].count = s->win[c].pos = 0;
    }
    s->last_switch_t = -1e18;
    s->up_since = s->slack_since = NONE_T;
    Py_CLEAR(s->sample_seen);
    s->probe_wait = s->probe_s;
    s->up_wait = s->dwell_s;
    s->last_up_t = -1e18;
    s->verify_opt = -1;
    s->verify_rate = 0.0;
    s->block_until = -1e18;
    s->down_block = s->down_block_s;
    s->probing = 0;
    s->current = current;
    return prepare(s, targets);
}

static int core_traverse(CoreObject *s, visitproc visit, void *arg) {
    Py_VISIT(s->tg);
    Py_VISIT(s->sample_seen);
    return 0;
}

static int core_clear(CoreObject *s) {
    Py_CLEAR(s->tg);
    Py_CLEAR(s->sample_seen);
    return 0;
}

static void core_dealloc(CoreObject *s) {
    PyObject_GC_UnTrack(s);
    core_clear(s);
    core_free_arrays(s);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static PyObject *core_get_bool(CoreObject *s, void *closure) {
    return PyBool_FromLong(s->probing);
}

static PyMethodDef core_methods[] = {
    {"step", (PyCFunction)(void (*)(void))core_step, METH_FASTCALL,
     "step(t, latency_ms, option, targets, system=None) -> the option for the next inference"},
    {"force", (PyCFunction)core_force, METH_O, "force(option): the manager overrode the choice"},
    {NULL}};

static PyMemberDef core_members[] = {
    {"current", T_INT, offsetof(CoreObject, current), READONLY, NULL},
    {"probe_wait", T_DOUBLE, offsetof(CoreObject, probe_wait), READONLY, NULL},
    {"up_wait", T_DOUBLE, offsetof(CoreObject, up_wait), READONLY, NULL},
    {"last_switch_t", T_DOUBLE, offsetof(CoreObject, last_switch_t), READONLY, NULL},
    {"deadline", T_DOUBLE, offsetof(CoreObject, deadline), READONLY, NULL},
    {NULL}};

static PyGetSetDef core_getset[] = {
    {"probing", (getter)core_get_bool, NULL, "a probe is under way", NULL},
    {NULL}};

static PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "dynadnn.runtime._native.FeedbackCore",
    .tp_basicsize = sizeof(CoreObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The feedback control law (see policies.feedback.FeedbackPolicy).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)core_init,
    .tp_dealloc = (destructor)core_dealloc,
    .tp_traverse = (traverseproc)core_traverse,
    .tp_clear = (inquiry)core_clear,
    .tp_methods = core_methods,
    .tp_members = core_members,
    .tp_getset = core_getset,
};

/* ---------------------------------------------------------------------------------------------------- */
/* ServingCore: `serving.PyServing.predict` in C                                                       */

static PyObject *str_sample, *str_step;

static inline double now_s(void) { /* the clock behind time.perf_counter on Linux */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline double cpu_s(void) { /* this thread's CPU time (time.thread_time): excludes preemption and steal */
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

typedef struct {
    PyObject_HEAD
    int n_opt, current, record, record_cpu;
    double *p50;
    PyObject *runners;          /* list of callables, one per option (the manager's list) */
    PyObject *targets;          /* Targets, replaced whole */
    double deadline;
    MonitorObject *monitor;
    CoreObject *core;           /* the native feedback policy, or NULL */
    PyObject *policy_step;      /* a Python policy's bound step, when core is NULL */
    PyObject *sample;           /* the system monitor's latest sample (pushed by set_sample) */
    PyObject *on_switch;        /* on_switch(option, latency_ms, t) -> the option actually applied */
    PyObject *on_error;         /* on_error(x, option, exc) -> (y, option that ran) */
    unsigned char *knobs;       /* per option: a switch to it needs on_switch (threads, affinity) */
    Py_ssize_t len, cap;
    double *r_t, *r_lat, *r_dec, *r_cpu, *r_dl;
    int *r_opt;
    Py_ssize_t n_sw, cap_sw;    /* the switch log: (t, from, to, latency_ms) */
    double *sw_t, *sw_lat;
    int *sw_from, *sw_to;
} ServingObject;

/* realloc *p to `bytes`; on failure *p is kept and MemoryError set */
static int grow(void *p, size_t bytes) {
    void **ptr = (void **)p;
    void *q = PyMem_Realloc(*ptr, bytes);
    if (!q) {
        PyErr_NoMemory();
        return -1;
    }
    *ptr = q;
    return 0;
}

static int switch_log(ServingObject *s, double t, int from, int to, double lat) {
    if (s->n_sw == s->cap_sw) {
        Py_ssize_t cap = s->cap_sw ? 2 * s->cap_sw : 256;
        if (grow(&s->sw_t, cap * sizeof(double)) < 0 || grow(&s->sw_lat, cap * sizeof(double)) < 0 ||
            grow(&s->sw_from, cap * sizeof(int)) < 0 || grow(&s->sw_to, cap * sizeof(int)) < 0)
            return -1;
        s->cap_sw = cap;
    }
    Py_ssize_t k = s->n_sw++;
    s->sw_t[k] = t;
    s->sw_from[k] = from;
    s->sw_to[k] = to;
    s->sw_lat[k] = lat;
    return 0;
}

static int records_grow(ServingObject *s) {
    Py_ssize_t cap = s->cap ? 2 * s->cap : 4096;
    size_t nd = cap * sizeof(double);
    if (grow(&s->r_t, nd) < 0 || grow(&s->r_lat, nd) < 0 || grow(&s->r_dec, nd) < 0 || grow(&s->r_dl, nd) < 0 ||
        grow(&s->r_cpu, nd) < 0 || grow(&s->r_opt, cap * sizeof(int)) < 0)
        return -1;
    s->cap = cap;
    return 0;
}

static PyObject *serving_predict(ServingObject *s, PyObject *const *args, Py_ssize_t nargs) {
    /* with record_cpu, the spans are also read in CPU time: a system call at each end, outside the wall
       spans, but it leaves the caches colder for them (so it is off unless asked for) */
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "predict(x, released_at=None)");
        return NULL;
    }
    PyObject *x = args[0];
    double released = -1.0; /* the frame's release (capture) time: latency counts from it */
    if (nargs == 2 && args[1] != Py_None) {
        released = PyFloat_AsDouble(args[1]);
        if (released == -1.0 && PyErr_Occurred()) return NULL;
    }
    double c0 = s->record_cpu ? cpu_s() : 0.0;
    double t0 = now_s();
    int idx = s->current;
    if (idx >= PyList_GET_SIZE(s->runners)) {
        PyErr_SetString(PyExc_IndexError, "the current option has no runner");
        return NULL;
    }
    /* an own reference: another thread may replace the runner while it runs (GIL released) */
    PyObject *runner = PyList_GET_ITEM(s->runners, idx);
    Py_INCREF(runner);
    double t1 = now_s();
    double c1 = s->record_cpu ? cpu_s() : 0.0;
    PyObject *y = PyObject_CallOneArg(runner, x);
    Py_DECREF(runner);
    if (!y) { /* the Python side logs, falls back to the safe option and re-runs the frame */
        if (!PyErr_ExceptionMatches(PyExc_Exception)) return NULL; /* Ctrl-C, SystemExit: not a failed inference */
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        if (tb) PyException_SetTraceback(value, tb);
        PyObject *res = PyObject_CallFunction(s->on_error, "OiO", x, idx, value ? value : Py_None);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        if (!res) return NULL;
        if (!PyTuple_Check(res) || PyTuple_GET_SIZE(res) != 2) {
            Py_DECREF(res);
            PyErr_SetString(PyExc_TypeError, "on_error must return (output, option)");
            return NULL;
        }
        y = PyTuple_GET_ITEM(res, 0);
        Py_INCREF(y);
        idx = (int)PyLong_AsLong(PyTuple_GET_ITEM(res, 1));
        Py_DECREF(res);
        if (idx == -1 && PyErr_Occurred()) goto fail;
    }
    double c2 = s->record_cpu ? cpu_s() : 0.0;
    double t2 = now_s();
    double start = released >= 0.0 ? released : t1;
    double lat = (t2 - start) * 1e3;
    /* targets and sample as they are now (set from other threads while the runner ran); no Python code
       runs before the native policy has used them, so borrowed references are safe there */
    PyObject *targets = s->targets, *sample = s->sample;
    double deadline = s->deadline;
    monitor_update(s->monitor, lat, s->p50[idx], deadline);
    int nxt;
    if (s->core) {
        nxt = step(s->core, t2, lat, idx, targets, sample);
    } else { /* a Python policy: own references, since its code may let other threads run */
        Py_INCREF(targets);
        Py_INCREF(sample);
        PyObject *args[5] = {PyFloat_FromDouble(t2), PyFloat_FromDouble(lat), PyLong_FromLong(idx), targets, sample};
        PyObject *r = NULL;
        if (args[0] && args[1] && args[2]) r = PyObject_Vectorcall(s->policy_step, args, 5, NULL);
        Py_XDECREF(args[0]);
        Py_XDECREF(args[1]);
        Py_XDECREF(args[2]);
        Py_DECREF(targets);
        Py_DECREF(sample);
        nxt = r ? (int)PyLong_AsLong(r) : -1;
        Py_XDECREF(r);
        if (nxt == -1 && !PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "policy.step returned -1");
    }
    if (nxt < 0) goto fail;
    if (nxt != s->current) {
        int before = s->current;
        long applied = nxt;
        if (s->knobs[nxt]) { /* threads or affinity to turn: the manager's Python does it */
            PyObject *r = PyObject_CallFunction(s->on_switch, "idd", nxt, lat, t2);
            if (!r) goto fail;
            applied = PyLong_AsLong(r);
            Py_DECREF(r);
            if (applied == -1 && PyErr_Occurred()) goto fail;
        }
        s->current = (int)applied;
        if (switch_log(s, t2, before, (int)applied, lat) < 0) goto fail;
    }
    double t3 = now_s();
    if (s->record) {
        double c3 = s->record_cpu ? cpu_s() : 0.0;
        if (s->len == s->cap && records_grow(s) < 0) goto fail;
        Py_ssize_t k = s->len++;
        s->r_t[k] = start;
        s->r_opt[k] = idx;
        s->r_lat[k] = lat;
        s->r_dec[k] = ((t1 - t0) + (t3 - t2)) * 1e6;
        s->r_cpu[k] = ((c1 - c0) + (c3 - c2)) * 1e6;
        s->r_dl[k] = deadline;
    }
    return y;
fail:
    Py_DECREF(y);
    return NULL;
}

static int serving_init(ServingObject *s, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"runners", "p50", "on_switch", "on_error", "record", "record_cpu", NULL};
    PyObject *runners, *p50, *on_switch, *on_error;
    int record = 1, record_cpu = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOO|pp", kwlist, &runners, &p50, &on_switch, &on_error, &record,
                                     &record_cpu))
        return -1;
    if (!PyList_Check(runners) || PyList_GET_SIZE(runners) < 1) {
        PyErr_SetString(PyExc_TypeError, "ServingCore: runners must be a non-empty list");
        return -1;
    }
    Py_ssize_t n = PyList_GET_SIZE(runners);
    PyMem_Free(s->p50);
    PyMem_Free(s->knobs);
    s->p50 = PyMem_Calloc(n, sizeof(double));
    s->knobs = PyMem_Calloc(n, 1); /* none until set_knobs */
    if (!s->p50 || !s->knobs) {
        PyErr_NoMemory();
        return -1;
    }
    if (read_doubles(p50, (int)n, s->p50, "p50") < 0) return -1;
    Py_INCREF(runners); /* the manager's own list: replacing a runner there takes effect here */
    Py_XSETREF(s->runners, runners);
    s->n_opt = (int)n;
    s->current = 0;
    s->record = record;
    s->record_cpu = record && record_cpu;
    Py_INCREF(Py_None);
    Py_XSETREF(s->sample, Py_None);
    Py_INCREF(on_switch);
    Py_XSETREF(s->on_switch, on_switch);
    Py_INCREF(on_error);
    Py_XSETREF(s->on_error, on_error);
    return 0;
}

static PyObject *serving_set_targets(ServingObject *s, PyObject *targets) {
    PyObject *d = PyObject_CallMethodNoArgs(targets, str_effective);
    if (!d) return NULL;
    double deadline = PyFloat_AsDouble(d);
    Py_DECREF(d);
    if (deadline == -1.0 && PyErr_Occurred()) return NULL;
    Py_INCREF(targets);
    s->deadline = deadline; /* predict reads the pair under the GIL: always consistent */
    Py_XSETREF(s->targets, targets);
    Py_RETURN_NONE;
}

static PyObject *serving_set_sample(ServingObject *s, PyObject *sample) {
    Py_INCREF(sample);
    Py_XSETREF(s->sample, sample);
    Py_RETURN_NONE;
}

static PyObject *serving_set_policy(ServingObject *s, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyObject_TypeCheck(args[1], &MonitorType)) {
        PyErr_SetString(PyExc_TypeError, "set_policy(policy, monitor: LatencyMonitorCore)");
        return NULL;
    }
    PyObject *policy = args[0];
    PyObject *core = PyObject_GetAttrString(policy, "core");
    if (!core) PyErr_Clear();
    if (core && PyObject_TypeCheck(core, &CoreType)) {
        Py_XSETREF(s->core, (CoreObject *)core);
        Py_CLEAR(s->policy_step);
    } else {
        Py_XDECREF(core);
        PyObject *st = PyObject_GetAttr(policy, str_step);
        if (!st) return NULL;
        Py_XSETREF(s->policy_step, st);
        Py_CLEAR(s->core);
    }
    Py_INCREF(args[1]);
    Py_XSETREF(s->monitor, (MonitorObject *)args[1]);
    Py_RETURN_NONE;
}

static PyObject *serving_set_knobs(ServingObject *s, PyObject *flags) {
    PyObject *fast = PySequence_Fast(flags, "set_knobs: expected a sequence of booleans");
    if (!fast) return NULL;
    if (PySequence_Fast_GET_SIZE(fast) != s->n_opt) {
        Py_DECREF(fast);
        PyErr_Format(PyExc_ValueError, "set_knobs: expected %d flags", s->n_opt);
        return NULL;
    }
    for (int i = 0; i < s->n_opt; i++) {
        int v = PyObject_IsTrue(PySequence_Fast_GET_ITEM(fast, i));
        if (v < 0) {
            Py_DECREF(fast);
            return NULL;
        }
        s->knobs[i] = (unsigned char)v;
    }
    Py_DECREF(fast);
    Py_RETURN_NONE;
}

static PyObject *serving_switches(ServingObject *s, PyObject *unused) {
    PyObject *out = PyList_New(s->n_sw);
    if (!out) return NULL;
    for (Py_ssize_t k = 0; k < s->n_sw; k++) {
        PyObject *row = Py_BuildValue("(diid)", s->sw_t[k], s->sw_from[k], s->sw_to[k], s->sw_lat[k]);
        if (!row) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, k, row);
    }
    return out;
}

static PyObject *serving_column(ServingObject *s, PyObject *arg) {
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name) return NULL;
    void *p = NULL;
    size_t size = sizeof(double);
    if (!strcmp(name, "t")) p = s->r_t;
    else if (!strcmp(name, "latency_ms")) p = s->r_lat;
    else if (!strcmp(name, "decision_us")) p = s->r_dec;
    else if (!strcmp(name, "decision_cpu_us")) p = s->r_cpu;
    else if (!strcmp(name, "deadline_ms")) p = s->r_dl;
    else if (!strcmp(name, "option")) { p = s->r_opt; size = sizeof(int); }
    else {
        PyErr_Format(PyExc_KeyError, "no record column '%s'", name);
        return NULL;
    }
    return PyBytes_FromStringAndSize(p ? (const char *)p : "", (Py_ssize_t)(s->len * size));
}

static PyObject *serving_reset_records(ServingObject *s, PyObject *unused) {
    s->len = 0;
    Py_RETURN_NONE;
}

static PyObject *serving_count(ServingObject *s, PyObject *unused) { return PyLong_FromSsize_t(s->len); }

static int serving_traverse(ServingObject *s, visitproc visit, void *arg) {
    Py_VISIT(s->runners);
    Py_VISIT(s->targets);
    Py_VISIT(s->monitor);
    Py_VISIT(s->core);
    Py_VISIT(s->policy_step);
    Py_VISIT(s->sample);
    Py_VISIT(s->on_switch);
    Py_VISIT(s->on_error);
    return 0;
}

static int serving_clear(ServingObject *s) {
    Py_CLEAR(s->runners);
    Py_CLEAR(s->targets);
    Py_CLEAR(s->monitor);
    Py_CLEAR(s->core);
    Py_CLEAR(s->policy_step);
    Py_CLEAR(s->sample);
    Py_CLEAR(s->on_switch);
    Py_CLEAR(s->on_error);
    return 0;
}

static void serving_dealloc(ServingObject *s) {
    PyObject_GC_UnTrack(s);
    serving_clear(s);
    PyMem_Free(s->p50);
    PyMem_Free(s->knobs);
    PyMem_Free(s->sw_t);
    PyMem_Free(s->sw_lat);
    PyMem_Free(s->sw_from);
    PyMem_Free(s->sw_to);
    PyMem_Free(s->r_t);
    PyMem_Free(s->r_lat);
    PyMem_Free(s->r_dec);
    PyMem_Free(s->r_dl);
    PyMem_Free(s->r_cpu);
    PyMem_Free(s->r_opt);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static PyObject *serving_get_current(ServingObject *s, void *unused) { return PyLong_FromLong(s->current); }

static int serving_set_current(ServingObject *s, PyObject *value, void *unused) {
    int v = option_index(value, s->n_opt);
    if (v < 0) return -1;
    s->current = v;
    return 0;
}

static PyMethodDef serving_methods[] = {
    {"predict", (PyCFunction)(void (*)(void))serving_predict, METH_FASTCALL,
     "predict(x, released_at=None): run the current option, measure (from released_at when given), decide"},
    {"set_targets", (PyCFunction)serving_set_targets, METH_O, "set_targets(targets)"},
    {"set_sample", (PyCFunction)serving_set_sample, METH_O, "set_sample(sample): the system monitor's latest"},
    {"set_policy", (PyCFunction)(void (*)(void))serving_set_policy, METH_FASTCALL, "set_policy(policy, monitor)"},
    {"column", (PyCFunction)serving_column, METH_O, "the raw bytes of one record column"},
    {"set_knobs", (PyCFunction)serving_set_knobs, METH_O, "set_knobs(flags): per option, switches need on_switch"},
    {"switches", (PyCFunction)serving_switches, METH_NOARGS, "the switch log: [(t, from, to, latency_ms)]"},
    {"reset_records", (PyCFunction)serving_reset_records, METH_NOARGS, "drop the records"},
    {"count", (PyCFunction)serving_count, METH_NOARGS, "number of records"},
    {NULL}};

static PyMemberDef serving_members[] = {
    {"record_cpu", T_INT, offsetof(ServingObject, record_cpu), READONLY, "the spans are also timed in CPU time"},
    {NULL}};

static PyGetSetDef serving_getset[] = {
    {"current", (getter)serving_get_current, (setter)serving_set_current, "the option the next frame runs", NULL},
    {NULL}};

static PyTypeObject ServingType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "dynadnn.runtime._native.ServingCore",
    .tp_basicsize = sizeof(ServingObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .tp_doc = "The manager's serving path (see serving.PyServing).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)serving_init,
    .tp_dealloc = (destructor)serving_dealloc,
    .tp_traverse = (traverseproc)serving_traverse,
    .tp_clear = (inquiry)serving_clear,
    .tp_methods = serving_methods,
    .tp_members = serving_members,
    .tp_getset = serving_getset,
};

/* ---------------------------------------------------------------------------------------------------- */

static struct PyModuleDef native_module = {PyModuleDef_HEAD_INIT, "dynadnn.runtime._native",
                                           "The manager's per-inference path in C.", -1, NULL};

PyMODINIT_FUNC PyInit__native(void) {
    if (PyType_Ready(&MonitorType) < 0 || PyType_Ready(&CoreType) < 0 || PyType_Ready(&ServingType) < 0)
        return NULL;
    str_ok = PyUnicode_InternFromString("ok");
    str_n_cpus = PyUnicode_InternFromString("n_cpus");
    str_others_busy = PyUnicode_InternFromString("others_busy");
    str_effective = PyUnicode_InternFromString("effective_deadline_ms");
    str_sample = PyUnicode_InternFromString("sample");
    str_step = PyUnicode_InternFromString("step");
    if (!str_ok || !str_n_cpus || !str_others_busy || !str_effective || !str_sample || !str_step) return NULL;
    PyObject *m = PyModule_Create(&native_module);
    if (!m) return NULL;
    Py_INCREF(&MonitorType);
    Py_INCREF(&CoreType);
    Py_INCREF(&ServingType);
    if (PyModule_AddObject(m, "LatencyMonitorCore", (PyObject *)&MonitorType) < 0 ||
        PyModule_AddObject(m, "FeedbackCore", (PyObject *)&CoreType) < 0 ||
        PyModule_AddObject(m, "ServingCore", (PyObject *)&ServingType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    PyObject *names = PyTuple_New(sizeof PARAMS / sizeof PARAMS[0] - 1);
    for (Py_ssize_t k = 0; names && PARAMS[k].name; k++) {
        PyObject *name = PyUnicode_FromString(PARAMS[k].name);
        if (!name) Py_CLEAR(names);
        else PyTuple_SET_ITEM(names, k, name);
    }
    if (!names || PyModule_AddObject(m, "FEEDBACK_PARAMS", names) < 0) {
        Py_XDECREF(names);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
