/* The compiled fast path of the Segment decoder (see clicklake/events/decode.py).
 *
 * decode_lines() scans a chunk's lines once each, with the GIL released, and writes the decoded
 * columns straight into growable buffers that Python wraps as Arrow arrays without a copy. It
 * only decodes what it is sure of: any line with something it does not handle, or that would
 * fail validation, is flagged "fallback" and its rows are rolled back; the DuckDB paths decode
 * those lines. Nested JSON kept as text (properties, traits, context) is written in the same
 * canonical form DuckDB's JSON writer gives (compact, minimal escapes, numbers as it prints
 * them), never re-serialized from a parsed tree.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* ---------------------------------------------------------------- owned buffers for Python */

#define CLICKLAKE_BUF_NAME "clicklake.events._cdecode.Buffer"
#define CLICKLAKE_BUF_DOC "Memory written by the decoder, exposed through the buffer protocol (read-only)."
#include "../_cbuffer.h"
#include "../_carrow.h"

/* ---------------------------------------------------------------- growable byte buffer */

typedef struct {
    char *d;
    size_t len, cap;
    int oom;
} Out;

/* Make room for n more bytes; the buffer at least doubles, so appends cost amortized O(1). */
static int out_grow(Out *o, size_t n) {
    size_t cap = o->cap ? o->cap : 4096;
    while (cap < o->len + n) cap *= 2;
    char *d = realloc(o->d, cap);
    if (d == NULL) {
        o->oom = 1;
        return 0;
    }
    o->d = d;
    o->cap = cap;
    return 1;
}

static inline int out_reserve(Out *o, size_t n) { return o->len + n <= o->cap || out_grow(o, n); }

/* Give back what a buffer reserved and did not use (a shrinking realloc does not copy). */
static void out_fit(Out *o) {
    if (o->d == NULL || o->len == o->cap) return;
    char *d = realloc(o->d, o->len ? o->len : 1);
    if (d != NULL) {
        o->d = d;
        o->cap = o->len ? o->len : 1;
    }
}

static inline int out_put(Out *o, const void *s, size_t n) {
    if (!out_reserve(o, n)) return 0;
    memcpy(o->d + o->len, s, n);
    o->len += n;
    return 1;
}

static inline int out_byte(Out *o, char c) {
    if (!out_reserve(o, 1)) return 0;
    o->d[o->len++] = c;
    return 1;
}

/* ---------------------------------------------------------------- JSON scanning */

/* A value's bytes in the line; kind: 0 absent, 's' string, 'n' number, 'o' object, 'a' array,
 * 't' true, 'f' false, 'z' null. esc: a string with escapes. */
typedef struct {
    const uint8_t *s, *e;
    char kind;
    char esc;
} Span;

typedef struct {
    const uint8_t *p, *end;
} Cur;

#define MAX_DEPTH 64

static inline void skip_ws(Cur *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) c->p++;
}

/* After an object member or array element: blanks, then ',' (1: another follows) or the
 * closing byte (0: consumed, the container ends); anything else is an error (-1). */
static inline int next_or_close(Cur *c, uint8_t close) {
    skip_ws(c);
    if (c->p >= c->end) return -1;
    if (*c->p == ',') {
        c->p++;
        return 1;
    }
    if (*c->p == close) {
        c->p++;
        return 0;
    }
    return -1;
}

static inline int hexval(uint8_t ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

static inline int read_hex4(const uint8_t *p) {
    int a = hexval(p[0]), b = hexval(p[1]), c = hexval(p[2]), d = hexval(p[3]);
    if ((a | b | c | d) < 0) return -1;
    return (a << 12) | (b << 8) | (c << 4) | d;
}

/* 1: plain printable ASCII that needs nothing. */
static uint8_t PLAIN[256];

/* Past the plain ASCII bytes of a string from p: to the first quote, backslash, control or
 * non-ASCII byte (or end). */
static inline const uint8_t *skip_plain(const uint8_t *p, const uint8_t *end) {
#ifdef __SSE2__
    const __m128i quote = _mm_set1_epi8('"'), bslash = _mm_set1_epi8('\\'), space = _mm_set1_epi8(0x20);
    while (end - p >= 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)p);
        /* signed compare: bytes >= 0x80 are negative, so below 0x20 as well */
        __m128i m = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(x, quote), _mm_cmpeq_epi8(x, bslash)),
                                 _mm_cmplt_epi8(x, space));
        int bits = _mm_movemask_epi8(m);
        if (bits) return p + __builtin_ctz((unsigned)bits);
        p += 16;
    }
#endif
    while (p < end && PLAIN[*p]) p++;
    return p;
}

/* Past the rest of a string whose opening quote is just before p, without validating it (the
 * emitting pass does): to after its closing quote. NULL if it does not end. */
static inline const uint8_t *skip_string_fast(const uint8_t *p, const uint8_t *end) {
    for (;;) {
#ifdef __SSE2__
        const __m128i quote = _mm_set1_epi8('"'), bslash = _mm_set1_epi8('\\');
        while (end - p >= 16) {
            __m128i x = _mm_loadu_si128((const __m128i *)p);
            int bits = _mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(x, quote), _mm_cmpeq_epi8(x, bslash)));
            if (bits) {
                p += __builtin_ctz((unsigned)bits);
                goto found;
            }
            p += 16;
        }
#endif
        while (p < end && *p != '"' && *p != '\\') p++;
#ifdef __SSE2__
    found:
#endif
        if (p >= end) return NULL;
        if (*p == '"') return p + 1;
        p += 2; /* a backslash and what it escapes */
    }
}

/* Past an object or array at c->p by matching brackets only; the emitting pass validates it. */
static int skip_composite(Cur *c) {
    int depth = 0;
    const uint8_t *p = c->p, *end = c->end;
    while (p < end) {
        uint8_t ch = *p;
        if (ch == '"') {
            p = skip_string_fast(p + 1, end);
            if (p == NULL) return -1;
            continue;
        }
        if (ch == '{' || ch == '[') {
            depth++;
        } else if (ch == '}' || ch == ']') {
            if (--depth == 0) {
                c->p = p + 1;
                return 0;
            }
        }
        p++;
    }
    return -1;
}

/* Validate a string at c->p (on its opening quote); on success c->p is past the closing quote.
 * Rejects what is not JSON, invalid UTF-8, lone surrogates and \u0000 (the DuckDB paths decide
 * those). Returns 0 ok, -1 fallback; sets *esc when it holds escapes. */
static int scan_string(Cur *c, char *esc) {
    const uint8_t *p = c->p + 1, *end = c->end;
    *esc = 0;
    for (;;) {
        p = skip_plain(p, end);
        if (p >= end) return -1;
        uint8_t ch = *p;
        if (ch == '"') {
            c->p = p + 1;
            return 0;
        }
        if (ch == '\\') {
            *esc = 1;
            if (p + 1 >= end) return -1;
            uint8_t e = p[1];
            if (e == 'u') {
                if (p + 6 > end) return -1;
                int u = read_hex4(p + 2);
                if (u <= 0) return -1; /* bad hex, or \u0000 */
                p += 6;
                if (u >= 0xDC00 && u <= 0xDFFF) return -1;
                if (u >= 0xD800 && u <= 0xDBFF) {
                    if (p + 6 > end || p[0] != '\\' || p[1] != 'u') return -1;
                    int lo = read_hex4(p + 2);
                    if (lo < 0xDC00 || lo > 0xDFFF) return -1;
                    p += 6;
                }
                continue;
            }
            if (e == '"' || e == '\\' || e == '/' || e == 'b' || e == 'f' || e == 'n' || e == 'r' || e == 't') {
                p += 2;
                continue;
            }
            return -1;
        }
        if (ch < 0x20) return -1;
        /* UTF-8 sequence */
        if (ch < 0xC2) return -1;
        if (ch < 0xE0) {
            if (p + 2 > end || (p[1] & 0xC0) != 0x80) return -1;
            p += 2;
        } else if (ch < 0xF0) {
            if (p + 3 > end || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80) return -1;
            if (ch == 0xE0 && p[1] < 0xA0) return -1;
            if (ch == 0xED && p[1] >= 0xA0) return -1;
            p += 3;
        } else if (ch < 0xF5) {
            if (p + 4 > end || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80)
                return -1;
            if (ch == 0xF0 && p[1] < 0x90) return -1;
            if (ch == 0xF4 && p[1] >= 0x90) return -1;
            p += 4;
        } else {
            return -1;
        }
    }
}

/* An object member's key and its colon, blanks before each: on success [*ks, *ke) is the key
 * with its quotes and *esc says whether it has escapes (as scan_string). -1: not a key. */
static inline int scan_key(Cur *c, const uint8_t **ks, const uint8_t **ke, char *esc) {
    skip_ws(c);
    if (c->p >= c->end || *c->p != '"') return -1;
    *ks = c->p;
    if (scan_string(c, esc)) return -1;
    *ke = c->p;
    skip_ws(c);
    if (c->p >= c->end || *c->p != ':') return -1;
    c->p++;
    return 0;
}

/* Which of the n names the key [s, s + len) is (without quotes), or -1. */
static inline int name_index(const char *const *names, const uint8_t *lens, int n, const uint8_t *s, size_t len) {
    for (int i = 0; i < n; i++)
        if (lens[i] == len && memcmp(names[i], s, len) == 0) return i;
    return -1;
}

static inline void put_utf8(Out *o, uint32_t u) {
    char b[4];
    size_t n;
    if (u < 0x80) {
        b[0] = (char)u;
        n = 1;
    } else if (u < 0x800) {
        b[0] = (char)(0xC0 | (u >> 6));
        b[1] = (char)(0x80 | (u & 0x3F));
        n = 2;
    } else if (u < 0x10000) {
        b[0] = (char)(0xE0 | (u >> 12));
        b[1] = (char)(0x80 | ((u >> 6) & 0x3F));
        b[2] = (char)(0x80 | (u & 0x3F));
        n = 3;
    } else {
        b[0] = (char)(0xF0 | (u >> 18));
        b[1] = (char)(0x80 | ((u >> 12) & 0x3F));
        b[2] = (char)(0x80 | ((u >> 6) & 0x3F));
        b[3] = (char)(0x80 | (u & 0x3F));
        n = 4;
    }
    out_put(o, b, n);
}

static const char HEX_UPPER[] = "0123456789ABCDEF";

/* Write one (already decoded) code point as DuckDB's JSON writer does: quote, backslash and
 * control characters escaped (\b \f \n \r \t, else \u00XX upper-case), everything else raw. */
static inline void put_canonical_cp(Out *o, uint32_t u) {
    if (u >= 0x20 && u != '"' && u != '\\') {
        put_utf8(o, u);
        return;
    }
    switch (u) {
        case '"': out_put(o, "\\\"", 2); return;
        case '\\': out_put(o, "\\\\", 2); return;
        case '\b': out_put(o, "\\b", 2); return;
        case '\f': out_put(o, "\\f", 2); return;
        case '\n': out_put(o, "\\n", 2); return;
        case '\r': out_put(o, "\\r", 2); return;
        case '\t': out_put(o, "\\t", 2); return;
        default: {
            char b[6] = {'\\', 'u', '0', '0', HEX_UPPER[(u >> 4) & 0xF], HEX_UPPER[u & 0xF]};
            out_put(o, b, 6);
        }
    }
}

/* Write a validated string's content (s..e between the quotes): unescaped raw bytes, or
 * (canonical) as a quoted JSON string. */
static void put_string(Out *o, const uint8_t *s, const uint8_t *e, int esc, int canonical) {
    if (canonical) out_byte(o, '"');
    if (!esc) {
        out_put(o, s, (size_t)(e - s));
    } else {
        const uint8_t *p = s;
        while (p < e) {
            const uint8_t *q = p;
            while (q < e && *q != '\\') q++;
            out_put(o, p, (size_t)(q - p));
            if (q >= e) break;
            uint32_t u;
            switch (q[1]) {
                case '"': u = '"'; break;
                case '\\': u = '\\'; break;
                case '/': u = '/'; break;
                case 'b': u = '\b'; break;
                case 'f': u = '\f'; break;
                case 'n': u = '\n'; break;
                case 'r': u = '\r'; break;
                case 't': u = '\t'; break;
                default: { /* u */
                    u = (uint32_t)read_hex4(q + 2);
                    if (u >= 0xD800 && u <= 0xDBFF) {
                        uint32_t lo = (uint32_t)read_hex4(q + 8);
                        u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
                        q += 6;
                    }
                    q += 4;
                }
            }
            q += 2;
            if (canonical)
                put_canonical_cp(o, u);
            else
                put_utf8(o, u);
            p = q;
        }
    }
    if (canonical) out_byte(o, '"');
}

/* Validate a number at c->p. Returns 0 ok, -1 not JSON. Sets *is_int for integers. */
static int scan_number(Cur *c, int *is_int) {
    const uint8_t *p = c->p, *end = c->end;
    *is_int = 1;
    if (p < end && *p == '-') p++;
    if (p >= end) return -1;
    if (*p == '0') {
        p++;
    } else if (*p >= '1' && *p <= '9') {
        while (p < end && *p >= '0' && *p <= '9') p++;
    } else {
        return -1;
    }
    if (p < end && *p == '.') {
        *is_int = 0;
        p++;
        if (p >= end || *p < '0' || *p > '9') return -1;
        while (p < end && *p >= '0' && *p <= '9') p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        *is_int = 0;
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        if (p >= end || *p < '0' || *p > '9') return -1;
        while (p < end && *p >= '0' && *p <= '9') p++;
    }
    c->p = p;
    return 0;
}

/* Whether a number literal is exactly what DuckDB's JSON writer prints for it, so it can be
 * copied as is: integers of up to 18 digits (not -0); decimals without exponent, with at most
 * 15 significant digits (so they are the shortest round-trip form), no trailing zero after the
 * point (but "x.0"), at most 15 integer digits and at most 5 zeros after "0.". */
static int number_is_canonical(const uint8_t *s, const uint8_t *e) {
    const uint8_t *p = s;
    int neg = 0;
    if (*p == '-') {
        neg = 1;
        p++;
    }
    const uint8_t *ip = p;
    while (p < e && *p >= '0' && *p <= '9') p++;
    size_t ilen = (size_t)(p - ip);
    if (p == e) {
        if (ilen > 18) return 0;
        if (neg && ilen == 1 && ip[0] == '0') return 0;
        return 1;
    }
    if (*p != '.') return 0;
    const uint8_t *fp = ++p;
    while (p < e && *p >= '0' && *p <= '9') p++;
    if (p != e) return 0; /* exponent */
    size_t flen = (size_t)(e - fp);
    if (ilen > 15) return 0;
    int frac_zero = (flen == 1 && fp[0] == '0');
    if (!frac_zero && fp[flen - 1] == '0') return 0;
    size_t sig;
    if (ilen == 1 && ip[0] == '0') {
        if (frac_zero) return 1;
        size_t lead = 0;
        while (lead < flen && fp[lead] == '0') lead++;
        if (lead > 5) return 0;
        sig = flen - lead;
    } else {
        sig = ilen + (frac_zero ? 0 : flen);
    }
    return sig <= 15;
}

static int emit_value(Cur *c, Out *o, int strip, int depth);

/* Compare a validated key (between quotes, no escapes) with a C string. */
static inline int key_is(const uint8_t *s, const uint8_t *e, const char *k, size_t klen) {
    return (size_t)(e - s) == klen && memcmp(s, k, klen) == 0;
}

/* The opening byte of an object or array (at c->p), and its closing byte when it is empty; both
 * copied to o. Returns 1 empty (consumed), 0 members or elements follow, -1 nested too deep. */
static inline int open_container(Cur *c, Out *o, uint8_t close, int depth) {
    if (depth >= MAX_DEPTH) return -1;
    if (o) out_byte(o, (char)*c->p);
    c->p++;
    skip_ws(c);
    if (c->p < c->end && *c->p == close) {
        c->p++;
        if (o) out_byte(o, (char)close);
        return 1;
    }
    return 0;
}

/* Validate (o NULL) or write canonically (o set) the value at c->p. strip: drop null members of
 * objects, recursively through objects but not arrays (what JSON merge patch keeps of a patch).
 * Returns 0 ok, -1 fallback. */
static int emit_value(Cur *c, Out *o, int strip, int depth) {
    skip_ws(c);
    if (c->p >= c->end) return -1;
    uint8_t ch = *c->p;
    if (ch == '"') {
        const uint8_t *s = c->p;
        char esc;
        if (scan_string(c, &esc)) return -1;
        if (o) put_string(o, s + 1, c->p - 1, esc, 1);
        return 0;
    }
    if (ch == '{') {
        int opened = open_container(c, o, '}', depth);
        if (opened) return opened > 0 ? 0 : -1;
        int first = 1;
        /* keys seen, for the duplicate check in strip mode (merge patch of duplicates: leave it to DuckDB) */
        const uint8_t *keys[32][2];
        int nkeys = 0;
        for (;;) {
            const uint8_t *ks, *ke;
            char kesc;
            if (scan_key(c, &ks, &ke, &kesc)) return -1;
            skip_ws(c);
            if (c->p >= c->end) return -1;
            if (strip) {
                if (kesc || nkeys >= 32) return -1;
                for (int i = 0; i < nkeys; i++)
                    if (keys[i][1] - keys[i][0] == ke - ks && memcmp(keys[i][0], ks, (size_t)(ke - ks)) == 0)
                        return -1;
                keys[nkeys][0] = ks;
                keys[nkeys][1] = ke;
                nkeys++;
                if (c->end - c->p >= 4 && memcmp(c->p, "null", 4) == 0) {
                    c->p += 4;
                    goto next;
                }
            }
            if (o) {
                if (!first) out_byte(o, ',');
                put_string(o, ks + 1, ke - 1, kesc, 1);
                out_byte(o, ':');
            }
            first = 0;
            if (emit_value(c, o, strip, depth + 1)) return -1;
        next:
            switch (next_or_close(c, '}')) {
            case 1:
                continue;
            case 0:
                if (o) out_byte(o, '}');
                return 0;
            default:
                return -1;
            }
        }
    }
    if (ch == '[') {
        int opened = open_container(c, o, ']', depth);
        if (opened) return opened > 0 ? 0 : -1;
        int first = 1;
        for (;;) {
            if (o && !first) out_byte(o, ',');
            first = 0;
            if (emit_value(c, o, 0, depth + 1)) return -1;
            switch (next_or_close(c, ']')) {
            case 1:
                continue;
            case 0:
                if (o) out_byte(o, ']');
                return 0;
            default:
                return -1;
            }
        }
    }
    if (ch == '-' || (ch >= '0' && ch <= '9')) {
        const uint8_t *s = c->p;
        int is_int;
        if (scan_number(c, &is_int)) return -1;
        if (o) {
            if (!number_is_canonical(s, c->p)) return -1;
            out_put(o, s, (size_t)(c->p - s));
        }
        return 0;
    }
    if (c->end - c->p >= 4 && memcmp(c->p, "true", 4) == 0) {
        c->p += 4;
        if (o) out_put(o, "true", 4);
        return 0;
    }
    if (c->end - c->p >= 5 && memcmp(c->p, "false", 5) == 0) {
        c->p += 5;
        if (o) out_put(o, "false", 5);
        return 0;
    }
    if (c->end - c->p >= 4 && memcmp(c->p, "null", 4) == 0) {
        c->p += 4;
        if (o) out_put(o, "null", 4);
        return 0;
    }
    return -1;
}

/* Validate the value at c->p and record its span; lazy: objects and arrays are only skipped
 * (for values that are emitted later, which validates them). */
static int scan_value_lazy(Cur *c, Span *sp, int lazy) {
    skip_ws(c);
    if (c->p >= c->end) return -1;
    sp->s = c->p;
    sp->esc = 0;
    uint8_t ch = *c->p;
    if (ch == '"') {
        if (scan_string(c, &sp->esc)) return -1;
        sp->kind = 's';
    } else if (ch == '-' || (ch >= '0' && ch <= '9')) {
        int is_int;
        if (scan_number(c, &is_int)) return -1;
        sp->kind = is_int ? 'n' : 'd';
    } else if (lazy && (ch == '{' || ch == '[')) {
        if (skip_composite(c)) return -1;
        sp->kind = ch == '{' ? 'o' : 'a';
    } else {
        if (emit_value(c, NULL, 0, 1)) return -1;
        sp->kind = ch == '{' ? 'o' : ch == '[' ? 'a' : ch == 't' ? 't' : ch == 'f' ? 'f' : 'z';
    }
    sp->e = c->p;
    return 0;
}

static int scan_value(Cur *c, Span *sp) { return scan_value_lazy(c, sp, 0); }

/* Scan an object at c->p, recording the spans of the named keys. Keys with escapes, duplicates
 * of named keys, and (unless allow_other) other keys make it a fallback. A null value counts as
 * absent (DuckDB reads a JSON null as SQL NULL). Returns 0 ok, -1 fallback. */
static int scan_fields_lazy(Cur *c, const char *const *names, const uint8_t *lens, int n, Span *out, int allow_other,
                            uint64_t lazy) {
    for (int i = 0; i < n; i++) out[i].kind = out[i].esc = 0;
    uint64_t seen = 0;
    skip_ws(c);
    if (c->p >= c->end || *c->p != '{') return -1;
    c->p++;
    skip_ws(c);
    if (c->p < c->end && *c->p == '}') {
        c->p++;
        return 0;
    }
    for (;;) {
        const uint8_t *ks, *ke;
        char kesc;
        if (scan_key(c, &ks, &ke, &kesc) || kesc) return -1;
        int idx = name_index(names, lens, n, ks + 1, (size_t)(ke - ks - 2));
        Span tmp;
        if (idx < 0) {
            if (!allow_other) return -1;
            if (scan_value(c, &tmp)) return -1;
        } else {
            if (seen & (1ULL << idx)) return -1;
            seen |= 1ULL << idx;
            if (scan_value_lazy(c, &out[idx], (int)((lazy >> idx) & 1))) return -1;
            if (out[idx].kind == 'z') {
                out[idx].kind = 0;
                out[idx].esc = 'z'; /* null, not absent: see batch */
            }
        }
        switch (next_or_close(c, '}')) {
        case 1:
            continue;
        case 0:
            return 0;
        default:
            return -1;
        }
    }
}

static int scan_fields(Cur *c, const char *const *names, const uint8_t *lens, int n, Span *out, int allow_other) {
    return scan_fields_lazy(c, names, lens, n, out, allow_other, 0);
}

/* Write an object span canonically (as emit_value does), recording where the named keys'
 * values landed in the output, as spans into o (valid until o is written again). Keys with
 * escapes and duplicates of named keys: fallback. A null value counts as absent. */
static int emit_fields(const Span *obj, Out *o, const char *const *names, const uint8_t *lens, int n, Span *out) {
    size_t so[8], eo[8];
    uint64_t seen = 0;
    for (int i = 0; i < n; i++) out[i].kind = 0;
    Cur cc = {obj->s, obj->e}, *c = &cc;
    c->p++;
    out_byte(o, '{');
    skip_ws(c);
    if (c->p < c->end && *c->p == '}') {
        c->p++;
        out_byte(o, '}');
    } else {
        int first = 1;
        for (;;) {
            const uint8_t *ks, *ke;
            char kesc;
            if (scan_key(c, &ks, &ke, &kesc) || kesc) return -1;
            if (!first) out_byte(o, ',');
            first = 0;
            out_put(o, ks, (size_t)(ke - ks));
            out_byte(o, ':');
            int idx = name_index(names, lens, n, ks + 1, (size_t)(ke - ks - 2));
            size_t vs = o->len;
            if (emit_value(c, o, 0, 2)) return -1;
            if (idx >= 0) {
                if (seen & (1ULL << idx)) return -1;
                seen |= 1ULL << idx;
                so[idx] = vs;
                eo[idx] = o->len;
            }
            int more = next_or_close(c, '}');
            if (more < 0) return -1;
            if (more) continue;
            out_byte(o, '}');
            break;
        }
    }
    if (c->p != obj->e || o->oom) return -1;
    for (int i = 0; i < n; i++) {
        if (!(seen & (1ULL << i))) continue;
        Span *sp = &out[i];
        sp->s = (const uint8_t *)o->d + so[i];
        sp->e = (const uint8_t *)o->d + eo[i];
        sp->esc = 0;
        uint8_t ch = *sp->s;
        if (ch == '"') {
            sp->kind = 's';
            sp->esc = memchr(sp->s + 1, '\\', (size_t)(sp->e - sp->s - 2)) != NULL;
        } else if (ch == '{') {
            sp->kind = 'o';
        } else if (ch == '[') {
            sp->kind = 'a';
        } else if (ch == 't' || ch == 'f') {
            sp->kind = (char)ch;
        } else if (ch == 'n') {
            sp->kind = 0;
        } else {
            sp->kind = memchr(sp->s, '.', (size_t)(sp->e - sp->s)) ? 'd' : 'n';
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- timestamps */

static int64_t days_from_civil(int64_t y, unsigned m, unsigned d) {
    y -= m <= 2;
    const int64_t era = (y >= 0 ? y : y - 399) / 400;
    const unsigned yoe = (unsigned)(y - era * 400);
    const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static inline int dig(const uint8_t *p, int n, int *v) {
    int x = 0;
    for (int i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') return -1;
        x = x * 10 + (p[i] - '0');
    }
    *v = x;
    return 0;
}

/* ISO 8601 with an explicit offset: YYYY-MM-DD[T ]HH:MM:SS[.f{1,6}](Z|+HH|+HHMM|+HH:MM), the
 * forms DuckDB's TIMESTAMPTZ cast reads the same whatever the session's time zone. */
static int parse_iso(const uint8_t *s, const uint8_t *e, int64_t *us) {
    size_t n = (size_t)(e - s);
    int Y, M, D, h, mi, se;
    if (n < 20) return -1;
    if (dig(s, 4, &Y) || s[4] != '-' || dig(s + 5, 2, &M) || s[7] != '-' || dig(s + 8, 2, &D)) return -1;
    if (s[10] != 'T' && s[10] != ' ') return -1;
    if (dig(s + 11, 2, &h) || s[13] != ':' || dig(s + 14, 2, &mi) || s[16] != ':' || dig(s + 17, 2, &se)) return -1;
    if (Y < 1 || M < 1 || M > 12 || D < 1 || h > 23 || mi > 59 || se > 59) return -1;
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = (Y % 4 == 0 && Y % 100 != 0) || Y % 400 == 0;
    if (D > mdays[M - 1] + (M == 2 && leap)) return -1;
    const uint8_t *p = s + 19;
    int64_t frac = 0;
    if (p < e && *p == '.') {
        p++;
        int nd = 0;
        while (p < e && *p >= '0' && *p <= '9' && nd < 7) {
            frac = frac * 10 + (*p - '0');
            p++;
            nd++;
        }
        if (nd == 0 || nd > 6) return -1;
        for (; nd < 6; nd++) frac *= 10;
    }
    if (p >= e) return -1;
    int64_t off_s = 0;
    if (*p == 'Z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int sign = *p == '-' ? -1 : 1, oh, om = 0;
        p++;
        if (e - p < 2 || dig(p, 2, &oh)) return -1;
        p += 2;
        if (p < e) {
            if (*p == ':') p++;
            if (e - p != 2 || dig(p, 2, &om)) return -1;
            p += 2;
        }
        if (oh > 14 || om > 59) return -1;
        off_s = sign * (oh * 3600 + om * 60);
    } else {
        return -1;
    }
    if (p != e) return -1;
    int64_t secs = days_from_civil(Y, (unsigned)M, (unsigned)D) * 86400 + h * 3600 + mi * 60 + se - off_s;
    *us = secs * 1000000 + frac;
    return 0;
}

/* A JSON integer literal of at most 15 digits (epoch ms, receive time). */
static int parse_small_int(const Span *sp, int64_t *v) {
    const uint8_t *p = sp->s;
    int neg = 0;
    if (*p == '-') {
        neg = 1;
        p++;
    }
    if (sp->e - p > 15 || sp->e == p) return -1;
    int64_t x = 0;
    for (; p < sp->e; p++) x = x * 10 + (*p - '0');
    *v = neg ? -x : x;
    return 0;
}

/* A timestamp field: string (ISO 8601) or integer epoch ms. Absent: *has = 0. */
static int ts_of(const Span *sp, int64_t *us, int *has) {
    *has = 0;
    if (!sp->kind) return 0;
    if (sp->kind == 's') {
        if (sp->esc || parse_iso(sp->s + 1, sp->e - 1, us)) return -1;
    } else if (sp->kind == 'n') {
        int64_t ms;
        if (parse_small_int(sp, &ms)) return -1;
        *us = ms * 1000;
    } else {
        return -1;
    }
    *has = 1;
    return 0;
}

/* ---------------------------------------------------------------- output columns */

enum {
    C_EVENT_ID,
    C_EVENT_TYPE,
    C_EVENT_NAME,
    C_APP, /* spool: the envelope's app; segment: the write key (mapped in Python) */
    C_USER_ID,
    C_ANON_ID,
    C_SESSION_ID,
    C_USER_KEY,
    C_GROUP_ID,
    C_PREV_ID,
    C_PAGE_URL,
    C_PAGE_PATH,
    C_PAGE_TITLE,
    C_PAGE_REFERRER,
    C_USER_AGENT,
    C_USER_IP,
    C_LIB_NAME,
    C_LIB_VERSION,
    C_PROPERTIES,
    C_TRAITS,
    C_CONTEXT,
    N_STR
};
enum { T_CREATED, T_SENT, T_COLLECTOR, T_DERIVED, N_TS };

/* ---------------------------------------------------------------- context members the columns hold */

/* The members of a decoded context that a column of the same row holds: dropped from the
 * context text when their value is a JSON string equal to the column's (a value with an escape
 * is kept: its text is not the column's bytes), so that a row keeps one copy of each. Emptied
 * page and library objects go with them. In the order of decode.py's CONTEXT_COPIES (and of strip_row_context's from_cols). */
enum { SC_UA, SC_IP, SC_SESSION, SC_URL, SC_PATH, SC_TITLE, SC_REFERRER, SC_LIB_NAME, SC_LIB_VERSION, NSC };
static const char *const SC_TOP[3] = {"userAgent", "ip", "sessionId"};
static const char *const SC_PAGE[4] = {"url", "path", "title", "referrer"};
static const char *const SC_LIB[2] = {"name", "version"};
static const size_t SC_TOP_LENS[3] = {9, 2, 9}, SC_PAGE_LENS[4] = {3, 4, 5, 8}, SC_LIB_LENS[2] = {4, 7};

typedef struct {
    const uint8_t *s;
    size_t len;
    int valid;
} Want;


/* p at '"': past the closing quote (NULL: none). Escapes are only skipped: a key or value with
 * one never equals a name or a column's bytes, which the callers compare. */
static inline const uint8_t *sc_string(const uint8_t *p, const uint8_t *e) { return skip_string_fast(p + 1, e); }

/* p at a value: past its end (NULL: malformed). */
static const uint8_t *sc_value(const uint8_t *p, const uint8_t *e) {
    if (p >= e) return NULL;
    if (*p == '"') return sc_string(p, e);
    if (*p == '{' || *p == '[') {
        long depth = 0;
        while (p < e) {
            if (*p == '"') {
                p = sc_string(p, e);
                if (p == NULL) return NULL;
                continue;
            }
            if (*p == '{' || *p == '[')
                depth++;
            else if ((*p == '}' || *p == ']') && --depth == 0)
                return p + 1;
            p++;
        }
        return NULL;
    }
    const uint8_t *q = p;
    while (q < e && *q != ',' && *q != '}' && *q != ']') q++;
    return q > p ? q : NULL;
}

/* Whether key k (klen bytes, no quotes) is name; the length and first byte first, as a key is
 * compared with several names and most are none of them. */
static inline int sc_key(const uint8_t *k, size_t klen, const char *name, size_t nlen) {
    return klen == nlen && k[0] == (uint8_t)name[0] && memcmp(k, name, klen) == 0;
}

/* Spans of a context's text to cut out, in order. */
typedef struct {
    const uint8_t *a, *b;
} Cut;

typedef struct {
    Cut *c;
    size_t n, cap;
    int oom;
} Cuts;

static void cut_add(Cuts *cs, const uint8_t *a, const uint8_t *b) {
    if (cs->n == cs->cap) {
        size_t cap = cs->cap ? 2 * cs->cap : 64;
        Cut *c2 = realloc(cs->c, cap * sizeof(Cut));
        if (c2 == NULL) {
            cs->oom = 1;
            return;
        }
        cs->c = c2;
        cs->cap = cap;
    }
    cs->c[cs->n].a = a;
    cs->c[cs->n++].b = b;
}

/* Scan the object at p (its '{') to past its '}' (*end), adding to cs the spans that drop the
 * members names[i] whose value is a JSON string without escapes equal to want[i]; at the top,
 * page and library are stripped the same way (and dropped whole when that empties them). A
 * dropped member goes with the comma before it when a member before it stays, else with the
 * comma after it: what is left is the kept members joined by commas, as the text was written.
 * Returns how many members were dropped, -1 when the text is not a compact JSON object;
 * *kept: members kept. */
static int sc_object(const uint8_t *p, const uint8_t *e, int top, const char *const *names, const size_t *lens,
                     int nn, const Want *want, Cuts *cs, const uint8_t **end, int *kept_out) {
    int dropped = 0, kept = 0;
    if (p >= e || *p != '{') return -1;
    p++;
    if (p < e && *p == '}') {
        *end = p + 1;
        *kept_out = 0;
        return 0;
    }
    for (;;) {
        const uint8_t *m = p;
        if (p >= e || *p != '"') return -1;
        const uint8_t *ke = sc_string(p, e);
        if (ke == NULL || ke >= e || *ke != ':') return -1;
        size_t klen = (size_t)(ke - m) - 2;
        const uint8_t *v = ke + 1, *ve = NULL;
        int drop = 0;
        int page = top && v < e && *v == '{' && sc_key(m + 1, klen, "page", 4);
        int lib = top && !page && v < e && *v == '{' && sc_key(m + 1, klen, "library", 7);
        if (page || lib) {
            size_t mark = cs->n;
            int ikept = 0;
            int r = sc_object(v, e, 0, page ? SC_PAGE : SC_LIB, page ? SC_PAGE_LENS : SC_LIB_LENS, page ? 4 : 2,
                              want + (page ? SC_URL : SC_LIB_NAME), cs, &ve, &ikept);
            if (r < 0) return -1;
            dropped += r;
            if (r > 0 && !ikept) {
                cs->n = mark; /* emptied: the member goes whole */
                drop = 1;
            }
        } else {
            ve = sc_value(v, e);
            if (ve == NULL) return -1;
            if (*v == '"') {
                size_t vlen = (size_t)(ve - v) - 2;
                for (int i = 0; i < nn; i++) {
                    const Want *w = &want[i];
                    if (w->valid && vlen == w->len && sc_key(m + 1, klen, names[i], lens[i]) &&
                        memchr(v + 1, '\\', vlen) == NULL && memcmp(v + 1, w->s, vlen) == 0) {
                        dropped++;
                        drop = 1;
                        break;
                    }
                }
            }
        }
        int more = ve < e && *ve == ',';
        if (!drop)
            kept++;
        else if (kept)
            cut_add(cs, m - 1, ve);
        else
            cut_add(cs, m, more ? ve + 1 : ve);
        p = ve;
        if (more) {
            p++;
            continue;
        }
        if (p < e && *p == '}') {
            *end = p + 1;
            break;
        }
        return -1;
    }
    *kept_out = kept;
    return dropped;
}

/* The text [s, e) without the cuts, written from w (w <= s, or another buffer): past its end.
 * memmove, as in place each kept span moves left over what was already read. */
static uint8_t *sc_apply(uint8_t *w, const uint8_t *s, const uint8_t *e, const Cuts *cs) {
    const uint8_t *from = s;
    for (size_t k = 0; k < cs->n; k++) {
        memmove(w, from, (size_t)(cs->c[k].a - from));
        w += cs->c[k].a - from;
        from = cs->c[k].b;
    }
    memmove(w, from, (size_t)(e - from));
    return w + (e - from);
}

/* ---------------------------------------------------------------- decoded columns */

typedef struct {
    Out data;
    int64_t *off;
} StrCol;

typedef struct {
    StrCol str[N_STR];
    int64_t *ts[N_TS];
    uint8_t *valid[N_STR + N_TS]; /* one byte per row; packed into bitmaps at the end */
    int32_t *source_index;
    int64_t *line_idx;
    size_t nrows, cap;
    int oom;
    Cuts cuts; /* strip_row_context's, kept from row to row */
} Cols;

/* Room for cap rows in every per-row array. */
static int cols_resize(Cols *t, size_t cap) {
    for (int i = 0; i < N_STR; i++) {
        int64_t *o = realloc(t->str[i].off, (cap + 1) * sizeof(int64_t));
        if (!o) return 0;
        t->str[i].off = o;
    }
    for (int i = 0; i < N_TS; i++) {
        int64_t *v = realloc(t->ts[i], cap * sizeof(int64_t));
        if (!v) return 0;
        t->ts[i] = v;
    }
    for (int i = 0; i < N_STR + N_TS; i++) {
        uint8_t *v = realloc(t->valid[i], cap);
        if (!v) return 0;
        t->valid[i] = v;
    }
    int32_t *si = realloc(t->source_index, cap * sizeof(int32_t));
    if (!si) return 0;
    t->source_index = si;
    int64_t *li = realloc(t->line_idx, cap * sizeof(int64_t));
    if (!li) return 0;
    t->line_idx = li;
    t->cap = cap;
    return 1;
}

static int cols_grow(Cols *t) { return t->nrows < t->cap || cols_resize(t, t->cap ? t->cap * 2 : 1024); }

static void cols_free(Cols *t) {
    for (int i = 0; i < N_STR; i++) {
        free(t->str[i].data.d);
        free(t->str[i].off);
    }
    for (int i = 0; i < N_TS; i++) free(t->ts[i]);
    for (int i = 0; i < N_STR + N_TS; i++) free(t->valid[i]);
    free(t->source_index);
    free(t->line_idx);
    free(t->cuts.c);
}

/* Set string column i of row r to NULL, or to raw bytes. */
static inline void set_null(Cols *t, size_t r, int i) {
    t->str[i].off[r + 1] = (int64_t)t->str[i].data.len;
    t->valid[i][r] = 0;
}

static inline void set_bytes(Cols *t, size_t r, int i, const void *s, size_t n) {
    out_put(&t->str[i].data, s, n);
    t->str[i].off[r + 1] = (int64_t)t->str[i].data.len;
    t->valid[i][r] = 1;
}

/* A scalar as text, as DuckDB's `->> '$'` / from_json VARCHAR give it: strings unescaped,
 * integers (18 digits at most) as written. Other types: fallback. Absent: NULL. */
static int set_scalar(Cols *t, size_t r, int i, const Span *sp, int allow_int) {
    if (!sp->kind) {
        set_null(t, r, i);
        return 0;
    }
    if (sp->kind == 's') {
        put_string(&t->str[i].data, sp->s + 1, sp->e - 1, sp->esc, 0);
        t->str[i].off[r + 1] = (int64_t)t->str[i].data.len;
        t->valid[i][r] = 1;
        return 0;
    }
    if (sp->kind == 'n' && allow_int && number_is_canonical(sp->s, sp->e)) {
        set_bytes(t, r, i, sp->s, (size_t)(sp->e - sp->s));
        return 0;
    }
    return -1;
}

/* Copy a column's value of row r (already written) into column j of the same row. */
static inline void copy_col(Cols *t, size_t r, int from, int to) {
    if (!t->valid[from][r]) {
        set_null(t, r, to);
        return;
    }
    StrCol *f = &t->str[from];
    int64_t a = f->off[r], b = f->off[r + 1];
    /* reserve first: the source may be the same growable buffer's neighbour, never itself */
    set_bytes(t, r, to, f->data.d + a, (size_t)(b - a));
}

static inline int span_is_empty_string(const Span *sp) { return sp->kind == 's' && sp->e - sp->s == 2; }

/* ---------------------------------------------------------------- field names */

enum {
    F_TYPE,
    F_EVENT,
    F_NAME,
    F_CATEGORY,
    F_MESSAGE_ID,
    F_USER_ID,
    F_ANON_ID,
    F_GROUP_ID,
    F_PREV_ID,
    F_TIMESTAMP,
    F_ORIG_TS,
    F_SENT_AT,
    F_RECEIVED_AT,
    F_WRITE_KEY,
    F_PROPERTIES,
    F_TRAITS,
    F_CONTEXT,
    F_INTEGRATIONS,
    F_METADATA,
    F_BATCH,
    NF
};
static const char *const FIELD_NAMES[NF] = {
    "type",      "event",     "name",       "category", "messageId",  "userId",     "anonymousId",
    "groupId",   "previousId", "timestamp", "originalTimestamp", "sentAt", "receivedAt", "writeKey",
    "properties", "traits",   "context",    "integrations", "_metadata", "batch"};
static uint8_t FIELD_LENS[NF];

enum { E_V, E_RT, E_APP, E_IP, E_UA, E_P, NE };
static const char *const ENV_NAMES[NE] = {"v", "rt", "app", "ip", "ua", "p"};
static uint8_t ENV_LENS[NE];

enum { X_PAGE, X_UA, X_IP, X_SESSION, X_LIBRARY, X_UNMAPPED, NX };
static const char *const CTX_NAMES[NX] = {"page", "userAgent", "ip", "sessionId", "library", "_unmapped"};
static uint8_t CTX_LENS[NX];

enum { P_URL, P_PATH, P_TITLE, P_REFERRER, P_SESSION, NP };
static const char *const PROPS_NAMES[NP] = {"url", "path", "title", "referrer", "session_id"};
static uint8_t PROPS_LENS[NP];

enum { L_NAME, L_VERSION, NL };
static const char *const LIB_NAMES[NL] = {"name", "version"};
static uint8_t LIB_LENS[NL];

/* Fields whose objects are written out (and so validated) later: only skipped when scanned. */
#define EMITTED ((1ULL << F_PROPERTIES) | (1ULL << F_TRAITS) | (1ULL << F_CONTEXT) | (1ULL << F_INTEGRATIONS) | \
                 (1ULL << F_METADATA) | (1ULL << F_BATCH))

static const char *const CALL_TYPES[] = {"track", "page", "screen", "identify", "group", "alias"};

/* ---------------------------------------------------------------- one event */

typedef struct {
    int spool;
    int64_t now_us, max_future_us, max_age_us;
    /* the line's envelope (spool) */
    Span app, ip, ua;
    int64_t rt_us;
    /* the batch's fields (batch lines) */
    Span b_context, b_sent, b_wk, b_recv;
} Ctx;

typedef struct {
    const uint8_t *ks, *ke; /* key, between its quotes */
    Span v;
} Member;

#define MAX_MEMBERS 64

/* The members of a validated object span: keys without escapes, no duplicates (DuckDB's merge
 * of duplicates is left to it), at most MAX_MEMBERS. Returns their count, or -1. */
static int members_of(const Span *obj, Member *m) {
    /* the span may only have been skipped over: validate as we go */
    Cur c = {obj->s + 1, obj->e};
    int n = 0;
    skip_ws(&c);
    if (c.p < c.end && *c.p == '}') return c.p + 1 == c.end ? 0 : -1;
    for (;;) {
        const uint8_t *ks, *ke;
        char kesc;
        if (n >= MAX_MEMBERS || scan_key(&c, &ks, &ke, &kesc) || kesc) return -1;
        m[n].ks = ks + 1;
        m[n].ke = ke - 1;
        for (int i = 0; i < n; i++)
            if (m[i].ke - m[i].ks == m[n].ke - m[n].ks && memcmp(m[i].ks, m[n].ks, (size_t)(m[n].ke - m[n].ks)) == 0)
                return -1;
        if (scan_value(&c, &m[n].v)) return -1;
        n++;
        skip_ws(&c);
        if (c.p >= c.end) return -1;
        if (*c.p == ',') {
            c.p++;
            continue;
        }
        return *c.p == '}' && c.p + 1 == c.end ? n : -1;
    }
}

static int member_find(const Member *m, int n, const uint8_t *ks, const uint8_t *ke) {
    for (int i = 0; i < n; i++)
        if (m[i].ke - m[i].ks == ke - ks && memcmp(m[i].ks, ks, (size_t)(ke - ks)) == 0) return i;
    return -1;
}

/* Write the JSON merge patch (RFC 7396, as yyjson builds it) of patch over orig (objects; orig
 * may be NULL): orig's members the patch does not name, in order, then the patch's non-null
 * members, objects merged recursively. */
static int write_merge(Out *o, const Span *orig, const Span *patch, int depth) {
    if (depth >= MAX_DEPTH) return -1;
    Member pm[MAX_MEMBERS], om[MAX_MEMBERS];
    int np = members_of(patch, pm);
    if (np < 0) return -1;
    int no = 0;
    if (orig) {
        no = members_of(orig, om);
        if (no < 0) return -1;
    }
    int first = 1;
    out_byte(o, '{');
    for (int i = 0; i < no; i++) {
        if (member_find(pm, np, om[i].ks, om[i].ke) >= 0) continue;
        if (!first) out_byte(o, ',');
        first = 0;
        put_string(o, om[i].ks, om[i].ke, 0, 1);
        out_byte(o, ':');
        Cur c = {om[i].v.s, om[i].v.e};
        if (emit_value(&c, o, 0, depth + 1)) return -1;
    }
    for (int i = 0; i < np; i++) {
        if (pm[i].v.kind == 'z') continue;
        if (!first) out_byte(o, ',');
        first = 0;
        put_string(o, pm[i].ks, pm[i].ke, 0, 1);
        out_byte(o, ':');
        if (pm[i].v.kind == 'o') {
            int j = member_find(om, no, pm[i].ks, pm[i].ke);
            if (write_merge(o, j >= 0 && om[j].v.kind == 'o' ? &om[j].v : NULL, &pm[i].v, depth + 1)) return -1;
        } else {
            Cur c = {pm[i].v.s, pm[i].v.e};
            if (emit_value(&c, o, 0, depth + 1)) return -1;
        }
    }
    out_byte(o, '}');
    return 0;
}

/* Row r's context (written from ctx_start) without the members its columns hold, compacted in
 * place: each kept span moves left, never past what is still to be read. What strip_context
 * does to the rows of the DuckDB paths, done here while the text is hot; 0 on success. */
static int strip_row_context(Cols *t, size_t r, size_t ctx_start) {
    static const int from_cols[NSC] = {C_USER_AGENT, C_USER_IP,    C_SESSION_ID, C_PAGE_URL,    C_PAGE_PATH,
                                       C_PAGE_TITLE, C_PAGE_REFERRER, C_LIB_NAME, C_LIB_VERSION};
    Want want[NSC];
    for (int c = 0; c < NSC; c++) {
        const StrCol *col = &t->str[from_cols[c]];
        want[c].valid = t->valid[from_cols[c]][r];
        want[c].s = (const uint8_t *)col->data.d + col->off[r];
        want[c].len = (size_t)(col->off[r + 1] - col->off[r]);
    }
    Out *co = &t->str[C_CONTEXT].data;
    uint8_t *s = (uint8_t *)co->d + ctx_start, *e = (uint8_t *)co->d + co->len;
    const uint8_t *end = NULL;
    int kept = 0;
    t->cuts.n = 0;
    t->cuts.oom = 0; /* a failed realloc sends one line to the DuckDB paths, not every later one */
    int dropped = sc_object(s, e, 1, SC_TOP, SC_TOP_LENS, 3, want, &t->cuts, &end, &kept);
    if (t->cuts.oom) return -1;
    if (dropped <= 0 || end != e) return 0;
    co->len = (size_t)(sc_apply(s, s, e, &t->cuts) - (uint8_t *)co->d);
    t->str[C_CONTEXT].off[r + 1] = (int64_t)co->len;
    return 0;
}

static int decode_event(Cols *t, const Ctx *cx, const Span *f, size_t line, int32_t index) {
    if (!cols_grow(t)) {
        t->oom = 1;
        return -1;
    }
    size_t r = t->nrows;
    /* type */
    if (f[F_TYPE].kind != 's' || f[F_TYPE].esc) return -1;
    const uint8_t *ts = f[F_TYPE].s + 1;
    size_t tl = (size_t)(f[F_TYPE].e - f[F_TYPE].s - 2);
    int type = -1;
    for (int i = 0; i < 6; i++)
        if (strlen(CALL_TYPES[i]) == tl && memcmp(CALL_TYPES[i], ts, tl) == 0) type = i;
    if (type < 0) return -1;
    /* ids */
    const Span *uid = &f[F_USER_ID], *aid = &f[F_ANON_ID];
    if (uid->kind && uid->kind != 's' && uid->kind != 'n') return -1;
    if (aid->kind && aid->kind != 's' && aid->kind != 'n') return -1;
    int uid_null = !uid->kind || span_is_empty_string(uid);
    int aid_null = !aid->kind || span_is_empty_string(aid);
    if (uid_null && aid_null) return -1;
    const Span *mid = &f[F_MESSAGE_ID];
    if (mid->kind != 's' && mid->kind != 'n') return -1; /* none: the id comes from the raw text */
    if (span_is_empty_string(mid)) return -1;
    /* call-specific fields */
    if (type == 0 && f[F_EVENT].kind != 's') return -1;
    if (type == 4 && !f[F_GROUP_ID].kind) return -1;
    if (type == 5 && !f[F_PREV_ID].kind) return -1;
    for (int i = F_PROPERTIES; i <= F_CONTEXT; i++)
        if (f[i].kind && f[i].kind != 'o') return -1;
    /* timestamps */
    int64_t created = 0, sent = 0, collector = 0;
    int has_created, has_sent, has_recv;
    const Span *cts = f[F_TIMESTAMP].kind ? &f[F_TIMESTAMP] : &f[F_ORIG_TS];
    if (ts_of(cts, &created, &has_created)) return -1;
    const Span *sts = f[F_SENT_AT].kind ? &f[F_SENT_AT] : &cx->b_sent;
    if (ts_of(sts, &sent, &has_sent)) return -1;
    if (cx->spool) {
        collector = cx->rt_us;
    } else {
        const Span *rts = f[F_RECEIVED_AT].kind ? &f[F_RECEIVED_AT] : &cx->b_recv;
        if (rts->kind && rts->kind != 's') return -1;
        if (ts_of(rts, &collector, &has_recv)) return -1;
        if (!has_recv) collector = cx->now_us;
    }
    int64_t derived = has_created && has_sent ? collector - (sent - created) : has_created ? created : collector;
    if (derived > collector + cx->max_future_us || derived < collector - cx->max_age_us) return -1;

    /* string columns */
    if (set_scalar(t, r, C_EVENT_ID, mid, 1)) return -1;
    set_bytes(t, r, C_EVENT_TYPE, ts, tl);
    if (type == 0) {
        if (set_scalar(t, r, C_EVENT_NAME, &f[F_EVENT], 0)) return -1;
    } else if (type == 1 || type == 2) {
        if (set_scalar(t, r, C_EVENT_NAME, &f[F_NAME], 0)) return -1;
    } else {
        set_null(t, r, C_EVENT_NAME);
    }
    if (cx->spool) {
        if (set_scalar(t, r, C_APP, &cx->app, 0)) return -1;
    } else {
        const Span *wk = f[F_WRITE_KEY].kind ? &f[F_WRITE_KEY] : &cx->b_wk;
        if (set_scalar(t, r, C_APP, wk, 0)) return -1;
    }
    if (uid_null)
        set_null(t, r, C_USER_ID);
    else if (set_scalar(t, r, C_USER_ID, uid, 1))
        return -1;
    if (aid_null)
        set_null(t, r, C_ANON_ID);
    else if (set_scalar(t, r, C_ANON_ID, aid, 1))
        return -1;
    if (set_scalar(t, r, C_GROUP_ID, &f[F_GROUP_ID], 1)) return -1;
    if (set_scalar(t, r, C_PREV_ID, &f[F_PREV_ID], 1)) return -1;

    /* properties (with the fields read from them), traits: canonical copies */
    Span pr[NP];
    for (int i = 0; i < NP; i++) pr[i].kind = 0;
    if (f[F_PROPERTIES].kind) {
        Out *po = &t->str[C_PROPERTIES].data;
        if (emit_fields(&f[F_PROPERTIES], po, PROPS_NAMES, PROPS_LENS, NP, pr)) return -1;
        t->str[C_PROPERTIES].off[r + 1] = (int64_t)po->len;
        t->valid[C_PROPERTIES][r] = 1;
    } else {
        set_null(t, r, C_PROPERTIES);
    }
    if (f[F_TRAITS].kind) {
        Cur c = {f[F_TRAITS].s, f[F_TRAITS].e};
        if (emit_value(&c, &t->str[C_TRAITS].data, 0, 1) || c.p != f[F_TRAITS].e) return -1;
        t->str[C_TRAITS].off[r + 1] = (int64_t)t->str[C_TRAITS].data.len;
        t->valid[C_TRAITS][r] = 1;
    } else {
        set_null(t, r, C_TRAITS);
    }

    /* context: the event's merged over the batch's (JSON merge patch), the SDK extras under
     * _unmapped; written first, then its fields are read back from what was written, which is
     * exactly the text DuckDB reads them from */
    const Span *bctx = &cx->b_context, *ectx = &f[F_CONTEXT];
    if (bctx->kind && bctx->kind != 'o') return -1;
    int has_extras = f[F_INTEGRATIONS].kind || f[F_METADATA].kind;
    Out *co = &t->str[C_CONTEXT].data;
    size_t ctx_start = co->len;
    Span x[NX];
    for (int i = 0; i < NX; i++) x[i].kind = 0;
    if (!bctx->kind && !ectx->kind && !has_extras) {
        set_null(t, r, C_CONTEXT);
    } else {
        int scanned = 0;
        if (bctx->kind && ectx->kind) {
            if (write_merge(co, bctx, ectx, 1)) return -1;
        } else if (bctx->kind || ectx->kind) {
            if (emit_fields(ectx->kind ? ectx : bctx, co, CTX_NAMES, CTX_LENS, NX, x)) return -1;
            scanned = 1;
        } else {
            out_put(co, "{}", 2);
        }
        if (has_extras) {
            if (co->oom) return -1;
            co->len--; /* reopen the object */
            if (co->len - ctx_start > 1) out_byte(co, ',');
            out_put(co, "\"_unmapped\":{", 13);
            int ufirst = 1;
            static const char *const extra_names[2] = {"integrations", "_metadata"};
            for (int k = 0; k < 2; k++) {
                const Span *sp = &f[F_INTEGRATIONS + k];
                if (!sp->kind) continue;
                if (!ufirst) out_byte(co, ',');
                ufirst = 0;
                out_byte(co, '"');
                out_put(co, extra_names[k], strlen(extra_names[k]));
                out_put(co, "\":", 2);
                Cur c = {sp->s, sp->e};
                if (emit_value(&c, co, 1, 1) || c.p != sp->e) return -1;
            }
            out_put(co, "}}", 2);
        }
        if (co->oom) return -1;
        t->str[C_CONTEXT].off[r + 1] = (int64_t)co->len;
        t->valid[C_CONTEXT][r] = 1;
        if (!scanned) {
            /* a merged context that already had _unmapped shows up as a duplicate here */
            Cur c = {(const uint8_t *)co->d + ctx_start, (const uint8_t *)co->d + co->len};
            if (scan_fields(&c, CTX_NAMES, CTX_LENS, NX, x, 1)) return -1;
        } else if (x[X_UNMAPPED].kind && has_extras) {
            return -1; /* DuckDB merges the extras into it */
        } else {
            /* the spans point into the output, which the extras may have moved */
            Span y[NX];
            Cur c = {(const uint8_t *)co->d + ctx_start, (const uint8_t *)co->d + co->len};
            if (has_extras) {
                if (scan_fields(&c, CTX_NAMES, CTX_LENS, NX, y, 1)) return -1;
                memcpy(x, y, sizeof y);
            }
        }
    }
    /* library and page must be objects to read fields from */
    Span lib[NL], page[NP - 1];
    for (int i = 0; i < NL; i++) lib[i].kind = 0;
    for (int i = 0; i < NP - 1; i++) page[i].kind = 0;
    if (x[X_LIBRARY].kind) {
        if (x[X_LIBRARY].kind != 'o') return -1;
        Cur c = {x[X_LIBRARY].s, x[X_LIBRARY].e};
        if (scan_fields(&c, LIB_NAMES, LIB_LENS, NL, lib, 1)) return -1;
    }
    if (x[X_PAGE].kind) {
        if (x[X_PAGE].kind != 'o') return -1;
        Cur c = {x[X_PAGE].s, x[X_PAGE].e};
        if (scan_fields(&c, PROPS_NAMES, PROPS_LENS, NP - 1, page, 1)) return -1;
    }
    /* session_id: NULLIF(COALESCE(context.sessionId, properties.session_id), '') */
    const Span *sess = x[X_SESSION].kind ? &x[X_SESSION] : &pr[P_SESSION];
    if (span_is_empty_string(sess))
        set_null(t, r, C_SESSION_ID);
    else if (set_scalar(t, r, C_SESSION_ID, sess, 1))
        return -1;
    for (int i = 0; i < 4; i++) {
        const Span *v = pr[i].kind ? &pr[i] : &page[i];
        if (set_scalar(t, r, C_PAGE_URL + i, v, 1)) return -1;
    }
    if (x[X_UA].kind) {
        if (set_scalar(t, r, C_USER_AGENT, &x[X_UA], 1)) return -1;
    } else if (cx->spool) {
        if (set_scalar(t, r, C_USER_AGENT, &cx->ua, 0)) return -1;
    } else {
        set_null(t, r, C_USER_AGENT);
    }
    if (x[X_IP].kind) {
        if (set_scalar(t, r, C_USER_IP, &x[X_IP], 1)) return -1;
    } else if (cx->spool) {
        if (set_scalar(t, r, C_USER_IP, &cx->ip, 0)) return -1;
    } else {
        set_null(t, r, C_USER_IP);
    }
    if (set_scalar(t, r, C_LIB_NAME, &lib[L_NAME], 1)) return -1;
    if (set_scalar(t, r, C_LIB_VERSION, &lib[L_VERSION], 1)) return -1;

    if (uid_null)
        copy_col(t, r, C_ANON_ID, C_USER_KEY);
    else
        copy_col(t, r, C_USER_ID, C_USER_KEY);
    if (t->valid[C_CONTEXT][r] && strip_row_context(t, r, ctx_start)) return -1;

    t->ts[T_CREATED][r] = created;
    t->valid[N_STR + T_CREATED][r] = (uint8_t)has_created;
    t->ts[T_SENT][r] = sent;
    t->valid[N_STR + T_SENT][r] = (uint8_t)has_sent;
    t->ts[T_COLLECTOR][r] = collector;
    t->valid[N_STR + T_COLLECTOR][r] = 1;
    t->ts[T_DERIVED][r] = derived;
    t->valid[N_STR + T_DERIVED][r] = 1;
    t->source_index[r] = index;
    t->line_idx[r] = (int64_t)line;
    for (int i = 0; i < N_STR; i++)
        if (t->str[i].data.oom) t->oom = 1;
    if (t->oom) return -1;
    t->nrows++;
    return 0;
}

/* ---------------------------------------------------------------- one line */

static int decode_payload(Cols *t, Ctx *cx, const Span *p, size_t line) {
    Span f[NF];
    Cur c = {p->s, p->e};
    if (scan_fields_lazy(&c, FIELD_NAMES, FIELD_LENS, NF, f, 0, EMITTED)) return -1;
    skip_ws(&c);
    if (c.p != p->e) return -1;
    if (f[F_BATCH].esc == 'z') return -1; /* "batch": null, an odd case the DuckDB paths settle */
    if (!f[F_BATCH].kind) {
        cx->b_context.kind = cx->b_sent.kind = cx->b_wk.kind = cx->b_recv.kind = 0;
        return decode_event(t, cx, f, line, 0);
    }
    /* a batch: only batch-level fields next to it, and a non-empty array of objects */
    for (int i = 0; i < NF; i++) {
        if (i == F_BATCH || i == F_SENT_AT || i == F_CONTEXT || i == F_WRITE_KEY || i == F_RECEIVED_AT) continue;
        if (f[i].kind) return -1;
    }
    if (f[F_BATCH].kind != 'a') return -1;
    cx->b_context = f[F_CONTEXT];
    cx->b_sent = f[F_SENT_AT];
    cx->b_wk = f[F_WRITE_KEY];
    cx->b_recv = f[F_RECEIVED_AT];
    Cur b = {f[F_BATCH].s + 1, f[F_BATCH].e};
    skip_ws(&b);
    if (*b.p == ']') return -1; /* no events: the exact path decides */
    int32_t idx = 0;
    for (;;) {
        skip_ws(&b);
        if (b.p >= b.end || *b.p != '{') return -1;
        Span ev;
        if (scan_value_lazy(&b, &ev, 1)) return -1;
        Span ef[NF];
        Cur ec = {ev.s, ev.e};
        if (scan_fields_lazy(&ec, FIELD_NAMES, FIELD_LENS, NF, ef, 0, EMITTED) || ec.p != ev.e) return -1;
        if (ef[F_BATCH].kind || ef[F_BATCH].esc == 'z') return -1;
        if (decode_event(t, cx, ef, line, idx)) return -1;
        idx++;
        skip_ws(&b);
        if (b.p < b.end && *b.p == ',') {
            b.p++;
            continue;
        }
        break;
    }
    return b.p + 1 == b.end && *b.p == ']' ? 0 : -1;
}

static int decode_line(Cols *t, Ctx *cx, const uint8_t *s, const uint8_t *e, size_t line) {
    /* the line must be one JSON object and nothing else but its line break */
    while (e > s && (e[-1] == '\n' || e[-1] == '\r')) e--;
    if (e <= s || *s != '{' || e[-1] != '}') return -1;
    Span whole = {s, e, 'o', 0};
    if (cx->spool) {
        Span env[NE];
        Cur c = {s, e};
        if (scan_fields_lazy(&c, ENV_NAMES, ENV_LENS, NE, env, 0, 1ULL << E_P) || c.p != e) return -1;
        if (env[E_RT].kind != 'n' || parse_small_int(&env[E_RT], &cx->rt_us)) return -1;
        cx->rt_us *= 1000;
        if (env[E_APP].kind != 's') return -1;
        if (env[E_IP].kind && env[E_IP].kind != 's') return -1;
        if (env[E_UA].kind && env[E_UA].kind != 's') return -1;
        if (env[E_P].kind != 'o') return -1;
        cx->app = env[E_APP];
        cx->ip = env[E_IP];
        cx->ua = env[E_UA];
        return decode_payload(t, cx, &env[E_P], line);
    }
    return decode_payload(t, cx, &whole, line);
}

/* ---------------------------------------------------------------- Python entry point */

static char *bitmap_of(const uint8_t *valid, size_t n, int64_t *nulls) {
    size_t nb = (n + 7) / 8;
    char *bm = calloc(nb ? nb : 1, 1);
    if (!bm) return NULL;
    int64_t z = 0;
    for (size_t i = 0; i < n; i++) {
        if (valid[i])
            bm[i >> 3] |= (char)(1 << (i & 7));
        else
            z++;
    }
    *nulls = z;
    return bm;
}

/* decode_lines(data, offsets, first, n, spool, max_event, max_request, now_us, max_future_us,
 *              max_age_us) -> (fallback, nrows, strings, timestamps, source_index, line_idx)
 *
 * data: the lines' bytes; offsets: int64 line offsets into data (n + 1 of them from index
 * first). fallback: one byte per line, 1 where the line must take the DuckDB path. strings: per
 * string column (validity bitmap, null count, int64 offsets, data); timestamps: per column
 * (validity bitmap, null count, int64 values). */
static PyObject *decode_lines(PyObject *self, PyObject *args) {
    Py_buffer data, offs;
    Py_ssize_t first, n;
    int spool;
    long long max_event, max_request, now_us, max_future_us, max_age_us;
    if (!PyArg_ParseTuple(args, "y*y*nnpLLLLL", &data, &offs, &first, &n, &spool, &max_event, &max_request,
                          &now_us, &max_future_us, &max_age_us))
        return NULL;
    PyObject *result = NULL;
    Cols t;
    memset(&t, 0, sizeof t);
    uint8_t *fallback = NULL;
    if ((size_t)offs.len < (size_t)(first + n + 1) * sizeof(int64_t) || first < 0 || n < 0) {
        PyErr_SetString(PyExc_ValueError, "offsets buffer too short");
        goto done;
    }
    const int64_t *lo = (const int64_t *)offs.buf + first;
    /* Sized from the chunk up front: one row per line (a batch line adds rows, and the arrays
     * grow then), and each string column's bytes a share of the lines' bytes, the JSON
     * documents all of them. Growing by realloc copies (within a thread's arena it cannot
     * remap), which cost more than the rest of the column handling; untouched reserved pages
     * cost nothing, and what is left unused is given back at the end. */
    size_t span = (n > 0 && lo[0] >= 0 && lo[n] >= lo[0] && lo[n] <= data.len) ? (size_t)(lo[n] - lo[0]) : 0;
    fallback = calloc(n ? (size_t)n : 1, 1);
    if (!fallback || !cols_resize(&t, n > 1024 ? (size_t)n : 1024)) {
        PyErr_NoMemory();
        goto done;
    }
    for (int i = 0; i < N_STR; i++) {
        t.str[i].off[0] = 0;
        int json = i == C_PROPERTIES || i == C_TRAITS || i == C_CONTEXT;
        if (span && !out_reserve(&t.str[i].data, json ? span : span / 4)) {
            PyErr_NoMemory();
            goto done;
        }
    }
    const uint8_t *base = (const uint8_t *)data.buf;
    int bad_offsets = 0;
    Py_BEGIN_ALLOW_THREADS;
    Ctx cx;
    memset(&cx, 0, sizeof cx);
    cx.spool = spool;
    cx.now_us = now_us;
    cx.max_future_us = max_future_us;
    cx.max_age_us = max_age_us;
    for (Py_ssize_t i = 0; i < n && !t.oom; i++) {
        int64_t a = lo[i], b = lo[i + 1];
        if (a < 0 || b < a || b > data.len) {
            bad_offsets = 1;
            break;
        }
        size_t mark_rows = t.nrows;
        size_t marks[N_STR];
        for (int k = 0; k < N_STR; k++) marks[k] = t.str[k].data.len;
        int fb = (b - a) > max_event - 2 || (b - a) > max_request;
        if (!fb) fb = decode_line(&t, &cx, base + a, base + b, (size_t)i) != 0;
        if (fb) {
            fallback[i] = 1;
            t.nrows = mark_rows;
            for (int k = 0; k < N_STR; k++) t.str[k].data.len = marks[k];
        }
    }
    Py_END_ALLOW_THREADS;
    if (bad_offsets) {
        PyErr_SetString(PyExc_ValueError, "line offsets out of range");
        goto done;
    }
    if (t.oom) {
        PyErr_NoMemory();
        goto done;
    }
    size_t nr = t.nrows;
    PyObject *strings = PyList_New(N_STR);
    PyObject *tss = PyList_New(N_TS);
    if (!strings || !tss) {
        Py_XDECREF(strings);
        Py_XDECREF(tss);
        goto done;
    }
    int failed = 0;
    for (int i = 0; i < N_STR && !failed; i++) {
        int64_t nulls;
        out_fit(&t.str[i].data);
        char *bm = bitmap_of(t.valid[i], nr, &nulls);
        if (!bm) {
            PyErr_NoMemory();
            failed = 1;
            break;
        }
        PyObject *bmo = buf_new(bm, (Py_ssize_t)((nr + 7) / 8));
        PyObject *offo = buf_new((char *)t.str[i].off, (Py_ssize_t)((nr + 1) * sizeof(int64_t)));
        t.str[i].off = NULL;
        PyObject *dato = buf_new(t.str[i].data.d, (Py_ssize_t)t.str[i].data.len);
        t.str[i].data.d = NULL;
        PyObject *tup = (bmo && offo && dato) ? Py_BuildValue("(NLNN)", bmo, (long long)nulls, offo, dato) : NULL;
        if (!tup) {
            failed = 1;
            break;
        }
        PyList_SET_ITEM(strings, i, tup);
    }
    for (int i = 0; i < N_TS && !failed; i++) {
        int64_t nulls;
        char *bm = bitmap_of(t.valid[N_STR + i], nr, &nulls);
        if (!bm) {
            PyErr_NoMemory();
            failed = 1;
            break;
        }
        PyObject *bmo = buf_new(bm, (Py_ssize_t)((nr + 7) / 8));
        PyObject *vo = buf_new((char *)t.ts[i], (Py_ssize_t)(nr * sizeof(int64_t)));
        t.ts[i] = NULL;
        PyObject *tup = (bmo && vo) ? Py_BuildValue("(NLN)", bmo, (long long)nulls, vo) : NULL;
        if (!tup) {
            failed = 1;
            break;
        }
        PyList_SET_ITEM(tss, i, tup);
    }
    if (failed) {
        Py_DECREF(strings);
        Py_DECREF(tss);
        goto done;
    }
    PyObject *fbo = buf_new((char *)fallback, n);
    fallback = NULL;
    PyObject *sio = buf_new((char *)t.source_index, (Py_ssize_t)(nr * sizeof(int32_t)));
    t.source_index = NULL;
    PyObject *lio = buf_new((char *)t.line_idx, (Py_ssize_t)(nr * sizeof(int64_t)));
    t.line_idx = NULL;
    if (!fbo || !sio || !lio) {
        Py_XDECREF(fbo);
        Py_XDECREF(sio);
        Py_XDECREF(lio);
        Py_DECREF(strings);
        Py_DECREF(tss);
        goto done;
    }
    result = Py_BuildValue("(NnNNNN)", fbo, (Py_ssize_t)nr, strings, tss, sio, lio);
done:
    free(fallback);
    cols_free(&t);
    PyBuffer_Release(&data);
    PyBuffer_Release(&offs);
    return result;
}

/* line_ends(data) -> (ends, ascii): the offset just past each line break (int64, as a buffer)
 * and whether every byte is ASCII, in one pass. */
static PyObject *line_ends(PyObject *self, PyObject *args) {
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "y*", &data)) return NULL;
    const uint8_t *base = (const uint8_t *)data.buf, *p = base, *end = base + data.len;
    size_t cap = 1024, n = 0;
    int64_t *ends = malloc(cap * sizeof(int64_t));
    int oom = ends == NULL, high = 0;
    Py_BEGIN_ALLOW_THREADS;
#ifdef __SSE2__
    const __m128i nl = _mm_set1_epi8('\n');
    __m128i acc = _mm_setzero_si128();
    while (!oom && end - p >= 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)p);
        acc = _mm_or_si128(acc, x);
        unsigned bits = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(x, nl));
        while (bits) {
            if (n == cap) {
                int64_t *e2 = realloc(ends, cap * 2 * sizeof(int64_t));
                if (!e2) {
                    oom = 1;
                    break;
                }
                ends = e2;
                cap *= 2;
            }
            ends[n++] = (int64_t)(p - base) + __builtin_ctz(bits) + 1;
            bits &= bits - 1;
        }
        p += 16;
    }
    high = _mm_movemask_epi8(acc) != 0;
#endif
    for (; !oom && p < end; p++) {
        high |= *p >= 0x80;
        if (*p != '\n') continue;
        if (n == cap) {
            int64_t *e2 = realloc(ends, cap * 2 * sizeof(int64_t));
            if (!e2) {
                oom = 1;
                break;
            }
            ends = e2;
            cap *= 2;
        }
        ends[n++] = (int64_t)(p - base) + 1;
    }
    Py_END_ALLOW_THREADS;
    PyBuffer_Release(&data);
    if (oom) {
        free(ends);
        return PyErr_NoMemory();
    }
    PyObject *buf = buf_new((char *)ends, (Py_ssize_t)(n * sizeof(int64_t)));
    if (!buf) return NULL;
    return Py_BuildValue("(NO)", buf, high ? Py_False : Py_True);
}

/* ---------------------------------------------------------------- strip_context() */

/* strip_context(n, context, columns): the context column (a string array spec, see _carrow.h)
 * without the members the columns hold (NSC string array specs, in SC_* order): (offsets, data)
 * buffers, or None when no row changed. */
static PyObject *strip_context(PyObject *self, PyObject *args) {
    Py_ssize_t n;
    PyObject *text_spec, *col_specs;
    if (!PyArg_ParseTuple(args, "nOO!", &n, &text_spec, &PyTuple_Type, &col_specs)) return NULL;
    if (n < 0 || PyTuple_GET_SIZE(col_specs) != NSC) {
        PyErr_Format(PyExc_ValueError, "need rows >= 0 and %d columns", NSC);
        return NULL;
    }
    Col cols[NSC + 1];
    int parsed = 0;
    for (; parsed <= NSC; parsed++) {
        PyObject *spec = parsed == 0 ? text_spec : PyTuple_GET_ITEM(col_specs, parsed - 1);
        int bad = col_parse(spec, n, &cols[parsed]) < 0;
        if (!bad && cols[parsed].kind == K_INT64) {
            PyErr_SetString(PyExc_ValueError, "strip_context takes string columns");
            bad = 1;
        }
        if (bad) {
            for (int j = 0; j <= parsed; j++) col_release(&cols[j]);
            return NULL;
        }
    }
    const Col *text = &cols[0];
    size_t total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        const uint8_t *s;
        size_t len;
        col_str(text, i, &s, &len);
        total += len;
    }
    int64_t *offsets = malloc((size_t)(n + 1) * sizeof(int64_t));
    uint8_t *out = malloc(total + 1);
    PyObject *result = NULL;
    if (offsets == NULL || out == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    size_t o = 0;
    Py_ssize_t changed = 0;
    Cuts cs = {NULL, 0, 0, 0};
    Py_BEGIN_ALLOW_THREADS;
    offsets[0] = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        const uint8_t *s;
        size_t len;
        col_str(text, i, &s, &len);
        if (col_valid(text, i) && len) {
            Want want[NSC];
            for (int c = 0; c < NSC; c++) {
                want[c].valid = col_valid(&cols[c + 1], i);
                col_str(&cols[c + 1], i, &want[c].s, &want[c].len);
            }
            const uint8_t *end = NULL;
            int kept = 0;
            cs.n = 0;
            int r = sc_object(s, s + len, 1, SC_TOP, SC_TOP_LENS, 3, want, &cs, &end, &kept);
            if (r > 0 && end == s + len && !cs.oom) {
                changed++;
            } else {
                cs.n = 0; /* kept as it is */
            }
            o = (size_t)(sc_apply(out + o, s, s + len, &cs) - out);
        }
        offsets[i + 1] = (int64_t)o;
    }
    Py_END_ALLOW_THREADS;
    free(cs.c);
    if (cs.oom) {
        PyErr_NoMemory();
        goto done;
    }
    if (changed == 0) {
        result = Py_None;
        Py_INCREF(result);
        goto done;
    }
    uint8_t *fit = realloc(out, o ? o : 1); /* shrinking: no copy */
    if (fit != NULL) out = fit;
    PyObject *ob = buf_new((char *)offsets, (n + 1) * (Py_ssize_t)sizeof(int64_t));
    offsets = NULL;
    if (ob == NULL) goto done;
    PyObject *db = buf_new((char *)out, (Py_ssize_t)o);
    out = NULL;
    if (db == NULL) {
        Py_DECREF(ob);
        goto done;
    }
    result = Py_BuildValue("(NN)", ob, db);
done:
    free(offsets);
    free(out);
    for (int j = 0; j <= NSC; j++) col_release(&cols[j]);
    return result;
}

static PyMethodDef methods[] = {
    {"line_ends", line_ends, METH_VARARGS, "Offsets past each line break, and whether the bytes are all ASCII."},
    {"decode_lines", decode_lines, METH_VARARGS, "Decode typical Segment lines; flag the others for fallback."},
    {"strip_context", strip_context, METH_VARARGS,
     "The context column without the members its row's columns hold; None when no row changed."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cdecode", NULL, -1, methods};

PyMODINIT_FUNC PyInit__cdecode(void) {
    for (int i = 0; i < 256; i++) PLAIN[i] = (i >= 0x20 && i < 0x80 && i != '"' && i != '\\');
    for (int i = 0; i < NF; i++) FIELD_LENS[i] = (uint8_t)strlen(FIELD_NAMES[i]);
    for (int i = 0; i < NE; i++) ENV_LENS[i] = (uint8_t)strlen(ENV_NAMES[i]);
    for (int i = 0; i < NX; i++) CTX_LENS[i] = (uint8_t)strlen(CTX_NAMES[i]);
    for (int i = 0; i < NP; i++) PROPS_LENS[i] = (uint8_t)strlen(PROPS_NAMES[i]);
    for (int i = 0; i < NL; i++) LIB_LENS[i] = (uint8_t)strlen(LIB_NAMES[i]);
    return clicklake_module(&module, 2); /* ABI: what decode.py expects of this build */
}
