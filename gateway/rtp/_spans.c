/* The per-packet loops of the relay path, in C: continue_span and stamp_span.
 *
 * gateway/rtp/spans.py holds the same two functions in Python. That version is the
 * reference: its docstrings define what these return, and the tests hold both to the same
 * answers on every input. Python runs each loop at some tens of bytecodes per packet; here
 * a packet costs a few comparisons and stores, which is what lets one event loop relay
 * 64 cameras with room to spare.
 *
 * Every index is checked against the buffer's length before it is read: the bytes come
 * from cameras and are not trusted.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum { KEY_NONE = 0, KEY_H264 = 1, KEY_H265 = 2 };
enum { SPAN_KEY = 1, SPAN_END = 2 };

static inline uint16_t be16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }

static inline uint32_t be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline void put16(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static inline void put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* Keyframe data in the payload p[0:n] (n >= 1) that does not continue a fragmented NAL
 * unit: gateway.codecs.h264/h265.rtp_packet_flags, keyframe and not continuation. */
static int h264_starts_key(const uint8_t *p, Py_ssize_t n) {
    int type = p[0] & 0x1F;
    if (type == 28 || type == 29) { /* FU-A, FU-B: the start fragment says */
        return n >= 2 && (p[1] & 0x80) && (p[1] & 0x1F) == 5;
    }
    if (type == 24) { /* STAP-A: the aggregated NAL headers */
        Py_ssize_t pos = 1;
        while (pos + 2 < n) {
            if ((p[pos + 2] & 0x1F) == 5) return 1;
            pos += 2 + be16(p + pos);
        }
        return 0;
    }
    return type == 5;
}

static inline int h265_irap(int type) { return type >= 16 && type <= 21; }

static int h265_starts_key(const uint8_t *p, Py_ssize_t n) {
    if (n < 3) return 0;
    int type = (p[0] >> 1) & 0x3F;
    if (type == 49) { /* FU */
        return (p[2] & 0x80) && h265_irap(p[2] & 0x3F);
    }
    if (type == 48) { /* AP */
        Py_ssize_t pos = 2;
        while (pos + 2 < n) {
            if (h265_irap((p[pos + 2] >> 1) & 0x3F)) return 1;
            pos += 2 + be16(p + pos);
        }
        return 0;
    }
    return h265_irap(type);
}

static PyObject *continue_span(PyObject *module, PyObject *args) {
    Py_buffer view;
    Py_ssize_t pos, size, room;
    long long seq, timestamp, ssrc;
    int key_codec;
    (void)module;
    if (!PyArg_ParseTuple(args, "y*nnLLLni:continue_span", &view, &pos, &size, &seq,
                          &timestamp, &ssrc, &room, &key_codec))
        return NULL;
    if (pos < 0 || size > view.len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "span outside the buffer");
        return NULL;
    }
    if (key_codec < KEY_NONE || key_codec > KEY_H265) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "key_codec must be KEY_NONE, KEY_H264 or KEY_H265");
        return NULL;
    }
    const uint8_t *buf = view.buf;
    int flags = 0;
    if (pos + 1 < size) {
        const uint8_t channel = buf[pos + 1];
        /* The "$" framing of gateway/rtp/interleaved.py, read inline: this is the relay
           path's per-packet loop, the reason this file exists. */
        while (pos + 16 < size && buf[pos] == 0x24 && buf[pos + 1] == channel) {
            const uint8_t *h = buf + pos + 4;
            Py_ssize_t end = pos + 4 + be16(buf + pos + 2);
            Py_ssize_t payload_size = end - pos - 16;
            if (end > size || payload_size <= 0 || payload_size > room) break;
            if (h[0] != 0x80 || (long long)be16(h + 2) != seq + 1 ||
                (long long)be32(h + 4) != timestamp || (long long)be32(h + 8) != ssrc)
                break;
            if (key_codec != KEY_NONE && !(flags & SPAN_KEY)) {
                const uint8_t *payload = buf + pos + 16;
                int key = key_codec == KEY_H264 ? h264_starts_key(payload, payload_size)
                                                : h265_starts_key(payload, payload_size);
                if (key) flags |= SPAN_KEY;
            }
            room -= payload_size;
            seq += 1;
            pos = end;
            if (h[1] & 0x80) {
                flags |= SPAN_END;
                break;
            }
        }
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("(nLni)", pos, seq, room, flags);
}

static PyObject *stamp_span(PyObject *module, PyObject *args) {
    Py_buffer view, table;
    Py_ssize_t start, end, shortest, longest;
    int channel, payload_type;
    unsigned long long seq, timestamp, ssrc;
    (void)module;
    if (!PyArg_ParseTuple(args, "y*nniiKKKnny*:stamp_span", &view, &start, &end, &channel,
                          &payload_type, &seq, &timestamp, &ssrc, &shortest, &longest, &table))
        return NULL;
    PyObject *result = NULL;
    if (start < 0 || start > end || end > view.len) {
        PyErr_SetString(PyExc_ValueError, "span outside the buffer");
        goto done;
    }
    if (shortest < 13 || table.len != 256) {
        PyErr_SetString(PyExc_ValueError,
                        "shortest must leave a payload byte and table have 256 entries");
        goto done;
    }
    Py_ssize_t size = end - start;
    PyObject *blob = PyByteArray_FromStringAndSize((const char *)view.buf + start, size);
    if (blob == NULL) goto done;
    uint8_t *out = (uint8_t *)PyByteArray_AS_STRING(blob);
    const uint8_t *allowed = table.buf;
    Py_ssize_t pos = 0, packets = 0;
    uint32_t s = (uint32_t)seq & 0xFFFF;
    while (pos < size) {
        if (pos + 4 > size) goto refuse;
        Py_ssize_t length = be16(out + pos + 2);
        Py_ssize_t stop = pos + 4 + length;
        /* length >= shortest >= 13, so out[pos + 16] lies inside this packet */
        if (length < shortest || length > longest || stop > size || !allowed[out[pos + 16]])
            goto refuse;
        uint8_t *h = out + pos;
        h[0] = 0x24;
        h[1] = (uint8_t)channel;
        h[4] = 0x80;
        h[5] = (uint8_t)(payload_type | (stop == size ? 0x80 : 0));
        put16(h + 6, s);
        put32(h + 8, (uint32_t)timestamp);
        put32(h + 12, (uint32_t)ssrc);
        packets += 1;
        s = (s + 1) & 0xFFFF;
        pos = stop;
    }
    result = Py_BuildValue("(Nn)", blob, packets);
    goto done;
refuse:
    Py_DECREF(blob);
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&view);
    PyBuffer_Release(&table);
    return result;
}

static PyMethodDef methods[] = {
    {"continue_span", continue_span, METH_VARARGS,
     "See gateway.rtp.spans.continue_span (the Python reference)."},
    {"stamp_span", stamp_span, METH_VARARGS,
     "See gateway.rtp.spans.stamp_span (the Python reference)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "_spans",
    .m_doc = "The relay path's per-packet loops, in C.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__spans(void) { return PyModule_Create(&module); }
