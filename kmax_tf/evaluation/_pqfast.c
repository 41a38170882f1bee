/* Optional native speed-ups for COCO panoptic PQ evaluation.
 *
 * Three functions, all working on caller-owned buffers (buffer protocol only,
 * so building needs no numpy headers) and releasing the GIL while they run:
 *
 *   unfilter_ids(raw, width, height, channels, out)
 *     Undoes the PNG scanline filters (None, Sub, Up, Average, Paeth) of an
 *     inflated, non-interlaced 8-bit image and writes one uint32 segment id
 *     per pixel into `out`: R + 256 G + 65536 B for RGB/RGBA (alpha ignored,
 *     as panopticapi's rgb2id), the grey value for greyscale.
 *
 *   pair_counts(gt_map, pred_map, gt_ids, pred_ids, counts) -> status
 *     Counts pixels per (GT segment, predicted segment) pair into the int64
 *     [(G + 1) * (P + 1)] matrix `counts` (row/column 0: VOID, id 0; listed
 *     id k: index k + 1). Returns 0, or 1 / 2 when the GT / prediction map
 *     holds an id missing from its list.
 *
 *   pair_counts_png(gt_raw, gt_channels, pred_raw, pred_channels, width,
 *                   height, gt_ids, pred_ids, counts) -> status
 *     Both at once: unfilters the two images row by row into small row
 *     buffers and counts each row pair while it is in L1 cache, without
 *     building id maps.
 *
 * Label maps are mostly flat, so the hot loops skip work where nothing
 * changes: rows equal to the row above, blocks of zero residuals, and pixel
 * pair counting loops over run breaks (found 16 pixels at a time with SSE2
 * compare masks), not over pixels. The results are exact regardless.
 *
 * Every size is checked against the buffers before any memory is touched;
 * bad input raises ValueError (never reads or writes out of bounds).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
/* GCC and clang on x86 compile an SSSE3 function next to baseline code and
 * pick it at import if the CPU has SSSE3 (function target attribute). */
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#define HAVE_SSSE3_UP_ROW 1
#endif

#if defined(_MSC_VER) && !defined(restrict)
#define restrict __restrict
#endif

#if defined(__GNUC__) || defined(__clang__)
#define ALWAYS_INLINE inline __attribute__((always_inline))
#elif defined(_MSC_VER)
#define ALWAYS_INLINE __forceinline
#else
#define ALWAYS_INLINE inline
#endif

/* ------------------------------------------------------------------------ */
/* PNG scanline unfiltering.                                                */

/* Rows are unfiltered one pixel at a time with the pixel's bytes packed into a
 * uint32 (byte k = channel k), so a pixel's channels are handled together with
 * byte-wise ("SIMD within a register") arithmetic. For RGB the packed pixel is
 * the panoptic id itself. */

/* Byte-wise a + b modulo 256. */
static inline uint32_t add_bytes(uint32_t a, uint32_t b) {
  return ((a & 0x7F7F7F7Fu) + (b & 0x7F7F7F7Fu)) ^ ((a ^ b) & 0x80808080u);
}

/* Byte-wise floor((a + b) / 2). */
static inline uint32_t average_bytes(uint32_t a, uint32_t b) {
  return (a & b) + (((a ^ b) & 0xFEFEFEFEu) >> 1);
}

static inline uint32_t paeth_byte(int left, int up, int up_left) {
  int distance_left = abs(up - up_left);
  int distance_up = abs(left - up_left);
  int distance_up_left = abs(left + up - 2 * up_left);
  /* Ties prefer left, then up (the PNG specification's order); written to
   * compile to conditional moves. */
  int best = distance_up < distance_left ? up : left;
  int best_distance = distance_up < distance_left ? distance_up : distance_left;
  return (uint32_t)(distance_up_left < best_distance ? up_left : best);
}

static ALWAYS_INLINE uint32_t paeth_pixel(uint32_t left, uint32_t up, uint32_t up_left,
                                          const int bpp) {
  /* Exact shortcuts, common in label maps: up == up_left makes every channel's
   * left distance 0 (left wins); left == up_left makes the up distance 0 (up
   * wins unless up == up_left too, where both agree). */
  if (up == up_left) return left;
  if (left == up_left) return up;
  uint32_t predicted = 0;
  for (int c = 0; c < bpp; ++c) {
    int shift = 8 * c;
    predicted |= paeth_byte((left >> shift) & 255, (up >> shift) & 255, (up_left >> shift) & 255)
                 << shift;
  }
  return predicted;
}

/* The packed pixel at `bytes`. All but the row's last pixel may read one byte
 * past it (the next pixel's), so one unaligned 4-byte load does for RGB. */
static ALWAYS_INLINE uint32_t load_pixel(const uint8_t *bytes, const int bpp, int last) {
  uint32_t pixel;
  if (bpp == 1) return bytes[0];
  if (bpp == 4 || !last) {
    memcpy(&pixel, bytes, sizeof(pixel));
    return bpp == 4 ? pixel : pixel & 0xFFFFFFu;
  }
  return (uint32_t)bytes[0] | ((uint32_t)bytes[1] << 8) | ((uint32_t)bytes[2] << 16);
}

/* Sub and Paeth rows skip BLOCK pixels at a time where nothing changes. */
#define BLOCK 8

static ALWAYS_INLINE uint64_t load_u64(const uint8_t *bytes) {
  uint64_t word;
  memcpy(&word, bytes, sizeof(word));
  return word;
}

/* True if the residuals of BLOCK (8) pixels, 8 * bpp bytes, are all zero. */
static ALWAYS_INLINE int zero_block(const uint8_t *filtered, const int bpp) {
  uint64_t any = load_u64(filtered);
  if (bpp >= 3) any |= load_u64(filtered + 8) | load_u64(filtered + 16);
  if (bpp == 4) any |= load_u64(filtered + 24);
  return any == 0;
}

/* True if BLOCK packed pixels all equal `value`. */
static ALWAYS_INLINE int constant_block(const uint32_t *pixels, uint32_t value) {
  uint32_t differ = 0;
  for (int k = 0; k < BLOCK; ++k) differ |= pixels[k] ^ value;
  return differ == 0;
}

/* Unfilters one row of `width` pixels of `bpp` bytes (bpp: 1, 3 or 4, a
 * constant after inlining). `filtered` is the row after its filter byte,
 * `previous` the packed unfiltered row above (zeros for the first row); writes
 * the packed row to `row`. Returns -1 for an unknown filter type. */
static ALWAYS_INLINE int unfilter_row(int filter, const uint8_t *restrict filtered,
                                      const uint32_t *restrict previous,
                                      uint32_t *restrict row, Py_ssize_t width, const int bpp) {
  const Py_ssize_t last = width - 1;
  uint32_t left = 0, up_left = 0;
  Py_ssize_t x;
  switch (filter) {
    case 0:
      for (x = 0; x < width; ++x, filtered += bpp) row[x] = load_pixel(filtered, bpp, x == last);
      break;
    case 1:
      for (x = 0; x < width;) {
        Py_ssize_t end = width - x < BLOCK ? width : x + BLOCK;
        if (end - x == BLOCK && zero_block(filtered, bpp)) {
          /* No residuals: the block repeats the pixel on its left. */
          for (; x < end; ++x) row[x] = left;
          filtered += BLOCK * bpp;
          continue;
        }
        for (; x < end; ++x, filtered += bpp) {
          left = row[x] = add_bytes(load_pixel(filtered, bpp, x == last), left);
        }
      }
      break;
    case 2:
      for (x = 0; x < width; ++x, filtered += bpp) {
        row[x] = add_bytes(load_pixel(filtered, bpp, x == last), previous[x]);
      }
      break;
    case 3:
      for (x = 0; x < width; ++x, filtered += bpp) {
        uint32_t average = average_bytes(left, previous[x]);
        left = row[x] = add_bytes(load_pixel(filtered, bpp, x == last), average);
      }
      break;
    case 4:
      for (x = 0; x < width;) {
        Py_ssize_t end = width - x < BLOCK ? width : x + BLOCK;
        if (end - x == BLOCK && zero_block(filtered, bpp) &&
            constant_block(previous + x, up_left)) {
          /* No residuals under a flat row above (up == up_left): Paeth picks left. */
          for (; x < end; ++x) row[x] = left;
          filtered += BLOCK * bpp;
          continue;
        }
        for (; x < end; ++x, filtered += bpp) {
          uint32_t up = previous[x];
          uint32_t predicted = paeth_pixel(left, up, up_left, bpp);
          left = row[x] = add_bytes(load_pixel(filtered, bpp, x == last), predicted);
          up_left = up;
        }
      }
      break;
    default:
      return -1;
  }
  return 0;
}

/* True if the `size` bytes at `data` are all zero (stops at the first 32
 * bytes that are not). */
static inline int all_zero(const uint8_t *data, Py_ssize_t size) {
  Py_ssize_t i = 0;
  for (; i + 32 <= size; i += 32) {
    if ((load_u64(data + i) | load_u64(data + i + 8) | load_u64(data + i + 16) |
         load_u64(data + i + 24)) != 0) {
      return 0;
    }
  }
  uint8_t any = 0;
  for (; i < size; ++i) any |= data[i];
  return any == 0;
}

/* An Up-filtered row whose residuals are mostly zero: copies the row above,
 * then recomputes only the blocks of BLOCK pixels with nonzero residuals. */
static ALWAYS_INLINE void up_sparse_row(const uint8_t *restrict filtered,
                                        const uint32_t *restrict previous,
                                        uint32_t *restrict row, Py_ssize_t width, const int bpp) {
  const Py_ssize_t last = width - 1;
  Py_ssize_t x = 0;
  memcpy(row, previous, (size_t)width * sizeof(uint32_t));
  for (; x + BLOCK <= width; x += BLOCK, filtered += BLOCK * bpp) {
    if (zero_block(filtered, bpp)) continue;
    for (int k = 0; k < BLOCK; ++k) {
      row[x + k] = add_bytes(load_pixel(filtered + k * bpp, bpp, x + k == last), previous[x + k]);
    }
  }
  for (; x < width; ++x, filtered += bpp) {
    row[x] = add_bytes(load_pixel(filtered, bpp, x == last), previous[x]);
  }
}

#ifdef HAVE_SSSE3_UP_ROW
/* Set at import when the CPU has SSSE3 (byte shuffles). */
static int cpu_has_ssse3 = 0;

/* Dense Up row for RGB with SSSE3: 4 pixels per step (12 bytes shuffled to
 * 4 packed pixels, then byte-wise added to the row above). Branch-free, so
 * it also suits rows with many nonzero residuals (noisy maps). */
__attribute__((target("ssse3"))) static void up_row_rgb_ssse3(
    const uint8_t *restrict filtered, const uint32_t *restrict previous,
    uint32_t *restrict row, Py_ssize_t width) {
  const __m128i spread = _mm_setr_epi8(0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, 9, 10, 11, -1);
  Py_ssize_t x = 0;
  /* The 16-byte load at byte 3x stays in the row while 3x + 16 <= 3 * width. */
  for (; 3 * x + 16 <= 3 * width; x += 4) {
    __m128i pixels = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(filtered + 3 * x)),
                                      spread);
    __m128i above = _mm_loadu_si128((const __m128i *)(previous + x));
    _mm_storeu_si128((__m128i *)(row + x), _mm_add_epi8(pixels, above));
  }
  for (; x < width; ++x) {
    row[x] = add_bytes(load_pixel(filtered + 3 * x, 3, x == width - 1), previous[x]);
  }
}
#endif

/* An Up-filtered row (not all zero). */
static ALWAYS_INLINE void up_row(const uint8_t *restrict filtered,
                                 const uint32_t *restrict previous, uint32_t *restrict row,
                                 Py_ssize_t width, const int bpp) {
#ifdef HAVE_SSSE3_UP_ROW
  if (bpp == 3 && cpu_has_ssse3) {
    up_row_rgb_ssse3(filtered, previous, row, width);
    return;
  }
#endif
  up_sparse_row(filtered, previous, row, width, bpp);
}

/* Unfilters all rows into `ids`; returns the first bad row (-1 if none) and
 * its filter in *bad_filter. `rows`: 2 * width zeroed uint32. For grey and
 * RGB the packed rows are the ids, so rows are unfiltered in place in `ids`;
 * RGBA keeps its packed rows (alpha included) in `rows`. */
static ALWAYS_INLINE Py_ssize_t unfilter_image(const uint8_t *source, Py_ssize_t width,
                                               Py_ssize_t height, const int bpp, uint32_t *rows,
                                               uint32_t *ids, int *bad_filter) {
  Py_ssize_t stride = width * bpp;
  const uint32_t *previous = rows; /* All zero: the row above the first one. */
  uint32_t *current = rows + width;
  for (Py_ssize_t y = 0; y < height; ++y, source += stride + 1, ids += width) {
    int filter = source[0];
    if (y > 0 && filter == 2 && all_zero(source + 1, stride)) {
      /* Same row as above (common in label maps): copy its ids. */
      memcpy(ids, ids - width, (size_t)width * sizeof(uint32_t));
      continue;
    }
    uint32_t *row = bpp == 4 ? current : ids;
    if (bpp != 4 && y > 0 && filter == 2) {
      up_row(source + 1, previous, row, width, bpp);
      previous = row;
      continue;
    }
    if (unfilter_row(filter, source + 1, previous, row, width, bpp) != 0) {
      *bad_filter = filter;
      return y;
    }
    if (bpp == 4) {
      for (Py_ssize_t x = 0; x < width; ++x) ids[x] = row[x] & 0xFFFFFFu;  /* Drops alpha. */
      current = (uint32_t *)previous;
    }
    previous = row;
  }
  return -1;
}

/* Checks an inflated image's size: `raw_len` must be height rows of one filter
 * byte + width * channels bytes, and width * height uint32 must fit. */
static int check_geometry(const char *function, const char *what, Py_ssize_t raw_len,
                          Py_ssize_t width, Py_ssize_t height, int channels) {
  if (channels != 1 && channels != 3 && channels != 4) {
    PyErr_Format(PyExc_ValueError, "%s: channels must be 1, 3 or 4, got %d", function, channels);
    return -1;
  }
  if (width <= 0 || height <= 0) {
    PyErr_Format(PyExc_ValueError, "%s: bad image size %zd x %zd", function, width, height);
    return -1;
  }
  if (width > (PY_SSIZE_T_MAX - 1) / channels) {
    PyErr_Format(PyExc_ValueError, "%s: width %zd is too large", function, width);
    return -1;
  }
  Py_ssize_t stride = width * channels;
  if (height > PY_SSIZE_T_MAX / (stride + 1) || height > PY_SSIZE_T_MAX / 4 / width) {
    PyErr_Format(PyExc_ValueError, "%s: image %zd x %zd is too large", function, width, height);
    return -1;
  }
  Py_ssize_t expected = height * (stride + 1);
  if (raw_len != expected) {
    PyErr_Format(PyExc_ValueError,
                 "%s image data has %zd bytes after inflating, but a %zd x %zd image with %d "
                 "channel(s) needs %zd",
                 what, raw_len, width, height, channels, expected);
    return -1;
  }
  return 0;
}

static PyObject *unfilter_ids(PyObject *self, PyObject *args) {
  Py_buffer raw, out;
  Py_ssize_t width, height;
  int channels;
  (void)self;
  if (!PyArg_ParseTuple(args, "y*nniw*:unfilter_ids", &raw, &width, &height, &channels, &out)) {
    return NULL;
  }
  PyObject *result = NULL;
  uint32_t *rows = NULL;
  if (check_geometry("unfilter_ids", "PNG", raw.len, width, height, channels) != 0) goto done;
  if (out.len / 4 < width * height) {
    PyErr_Format(PyExc_ValueError, "unfilter_ids: output buffer has %zd bytes, needs %zd",
                 out.len, width * height * 4);
    goto done;
  }
  if (((uintptr_t)out.buf) % sizeof(uint32_t) != 0) {
    PyErr_SetString(PyExc_ValueError, "unfilter_ids: output buffer is not 4-byte aligned");
    goto done;
  }
  rows = (uint32_t *)calloc(2 * (size_t)width, sizeof(uint32_t));
  if (rows == NULL) {
    PyErr_NoMemory();
    goto done;
  }
  Py_ssize_t bad_row = -1;
  int bad_filter = 0;
  Py_BEGIN_ALLOW_THREADS
  const uint8_t *source = (const uint8_t *)raw.buf;
  uint32_t *ids = (uint32_t *)out.buf;
  if (channels == 1) {
    bad_row = unfilter_image(source, width, height, 1, rows, ids, &bad_filter);
  } else if (channels == 3) {
    bad_row = unfilter_image(source, width, height, 3, rows, ids, &bad_filter);
  } else {
    bad_row = unfilter_image(source, width, height, 4, rows, ids, &bad_filter);
  }
  Py_END_ALLOW_THREADS
  if (bad_row >= 0) {
    PyErr_Format(PyExc_ValueError, "PNG row %zd has invalid filter type %d (must be 0-4)",
                 bad_row, bad_filter);
    goto done;
  }
  result = Py_None;
  Py_INCREF(result);
done:
  free(rows);
  PyBuffer_Release(&raw);
  PyBuffer_Release(&out);
  return result;
}

/* ------------------------------------------------------------------------ */
/* Pair counting.                                                           */

#define EMPTY_KEY UINT32_MAX

typedef struct {
  uint32_t *keys;
  Py_ssize_t *values;
  uint32_t mask;
  int shift;
} IdTable;

static inline uint32_t id_hash(uint32_t key, int shift) {
  return (uint32_t)((key * 2654435761u) >> shift);
}

/* Maps 0 -> 0 and ids[k] -> k + 1. Returns -1 on a bad id (set *bad_id), -2 on no memory. */
static int id_table_init(IdTable *table, const int64_t *ids, Py_ssize_t count, int64_t *bad_id) {
  int bits = 4;
  while (((Py_ssize_t)1 << bits) < 2 * (count + 1)) ++bits;
  if (bits > 31) return -2;
  size_t size = (size_t)1 << bits;
  table->mask = (uint32_t)(size - 1);
  table->shift = 32 - bits;
  table->keys = (uint32_t *)malloc(size * sizeof(uint32_t));
  table->values = (Py_ssize_t *)malloc(size * sizeof(Py_ssize_t));
  if (table->keys == NULL || table->values == NULL) return -2;
  memset(table->keys, 0xFF, size * sizeof(uint32_t));
  for (Py_ssize_t k = -1; k < count; ++k) {
    int64_t id = k < 0 ? 0 : ids[k];
    if (k >= 0 && (id <= 0 || id >= (int64_t)EMPTY_KEY)) {
      *bad_id = id;
      return -1;
    }
    uint32_t slot = id_hash((uint32_t)id, table->shift);
    while (table->keys[slot] != EMPTY_KEY) {
      if (table->keys[slot] == (uint32_t)id) {
        *bad_id = id;
        return -1;
      }
      slot = (slot + 1) & table->mask;
    }
    table->keys[slot] = (uint32_t)id;
    table->values[slot] = k + 1;
  }
  return 0;
}

static inline Py_ssize_t id_table_find(const IdTable *table, uint32_t key) {
  uint32_t slot = id_hash(key, table->shift);
  for (;;) {
    uint32_t found = table->keys[slot];
    if (found == key) return table->values[slot];
    if (found == EMPTY_KEY) return -1;
    slot = (slot + 1) & table->mask;
  }
}

static void id_table_free(IdTable *table) {
  free(table->keys);
  free(table->values);
}

static int check_itemsize(const char *function, const Py_buffer *view, Py_ssize_t itemsize,
                          const char *name) {
  if (view->itemsize != itemsize || view->len % itemsize != 0) {
    PyErr_Format(PyExc_ValueError, "%s: %s must hold %zd-byte items, got %zd-byte items",
                 function, name, itemsize, view->itemsize);
    return -1;
  }
  if (((uintptr_t)view->buf) % (uintptr_t)itemsize != 0) {
    PyErr_Format(PyExc_ValueError, "%s: %s is not aligned", function, name);
    return -1;
  }
  return 0;
}

#define PAIR_CACHE_BITS 8

/* Run-length pair counting state, carried across calls (rows). */
typedef struct {
  const IdTable *gt_table, *pred_table;
  int64_t *counts;
  Py_ssize_t num_columns; /* P + 1. */
  uint64_t last_pair;     /* (GT id << 32) | prediction id of the current run. */
  Py_ssize_t cell, run;
  int started;
  /* Direct-mapped cache (GT id, prediction id) -> counts cell: a run break
   * (usually back to a recent pair) costs one probe instead of two id lookups. */
  uint64_t cached_pair[1 << PAIR_CACHE_BITS];
  Py_ssize_t cached_cell[1 << PAIR_CACHE_BITS]; /* -1: empty slot. */
} PairCounter;

static inline uint64_t make_pair(uint32_t gt_id, uint32_t pred_id) {
  return ((uint64_t)gt_id << 32) | pred_id;
}

/* The counts cell of a pair; -1 / -2 if its GT / prediction id is unknown. */
static inline Py_ssize_t pair_cell(PairCounter *counter, uint64_t pair) {
  size_t slot = (size_t)((pair * 0x9E3779B97F4A7C15ull) >> (64 - PAIR_CACHE_BITS));
  if (counter->cached_pair[slot] == pair && counter->cached_cell[slot] >= 0) {
    return counter->cached_cell[slot];
  }
  Py_ssize_t gt_index = id_table_find(counter->gt_table, (uint32_t)(pair >> 32));
  if (gt_index < 0) return -1;
  Py_ssize_t pred_index = id_table_find(counter->pred_table, (uint32_t)pair);
  if (pred_index < 0) return -2;
  Py_ssize_t cell = gt_index * counter->num_columns + pred_index;
  counter->cached_pair[slot] = pair;
  counter->cached_cell[slot] = cell;
  return cell;
}

/* Pixels come in runs of one (GT, prediction) pair: only run breaks cost a
 * lookup. Returns 0, or 1 / 2 for an unknown GT / prediction id. */
static int count_pairs(PairCounter *counter, const uint32_t *gt, const uint32_t *pred,
                       Py_ssize_t num_pixels) {
  Py_ssize_t i = 0;
  if (num_pixels <= 0) return 0;
  if (!counter->started) {
    counter->last_pair = make_pair(gt[0], pred[0]);
    counter->cell = pair_cell(counter, counter->last_pair);
    if (counter->cell < 0) return (int)-counter->cell;
    counter->run = 0;
    counter->started = 1;
  }
  uint64_t last_pair = counter->last_pair;
  Py_ssize_t cell = counter->cell, run = counter->run;
  int64_t *counts = counter->counts;
  int unknown = 0;
#if defined(__SSE2__) && (defined(__GNUC__) || defined(__clang__))
  /* Pixel 0 against the run carried over from the previous call. */
  uint64_t first = make_pair(gt[0], pred[0]);
  if (first == last_pair) {
    ++run;
  } else {
    counts[cell] += run;
    run = 1;
    last_pair = first;
    cell = pair_cell(counter, first);
    if (cell < 0) return (int)-cell;
  }
  i = 1;
  /* Blocks of 16: a bit mask of the pixels whose pair differs from their left
   * neighbour's; the loop runs once per run break, not once per pixel. */
  for (; i + 16 <= num_pixels; i += 16) {
    int changed = 0;
    for (int k = 0; k < 16; k += 4) {
      __m128i same = _mm_and_si128(
          _mm_cmpeq_epi32(_mm_loadu_si128((const __m128i *)(gt + i + k)),
                          _mm_loadu_si128((const __m128i *)(gt + i + k - 1))),
          _mm_cmpeq_epi32(_mm_loadu_si128((const __m128i *)(pred + i + k)),
                          _mm_loadu_si128((const __m128i *)(pred + i + k - 1))));
      changed |= (~_mm_movemask_ps(_mm_castsi128_ps(same)) & 15) << k;
    }
    int start = 0;
    while (changed) {
      int k = __builtin_ctz((unsigned)changed);
      changed &= changed - 1;
      counts[cell] += run + (k - start);
      run = 0;
      start = k;
      last_pair = make_pair(gt[i + k], pred[i + k]);
      cell = pair_cell(counter, last_pair);
      if (cell < 0) {
        unknown = (int)-cell;
        break;
      }
    }
    if (unknown) break;
    run += 16 - start;
  }
#endif
  for (; i < num_pixels && !unknown; ++i) {
    uint64_t pair = make_pair(gt[i], pred[i]);
    if (pair == last_pair) {
      ++run;
      continue;
    }
    counts[cell] += run;
    run = 1;
    last_pair = pair;
    cell = pair_cell(counter, pair);
    if (cell < 0) unknown = (int)-cell;
  }
  counter->last_pair = last_pair;
  counter->cell = cell;
  counter->run = unknown ? 0 : run;
  return unknown;
}

static void count_pairs_finish(PairCounter *counter) {
  if (counter->started && counter->cell >= 0) counter->counts[counter->cell] += counter->run;
  counter->run = 0;
}

/* Gets gt_ids, pred_ids (int64) and counts (writable int64 (G + 1) * (P + 1))
 * from `objects`, builds the id tables and zeroes counts. Returns 0, or -1
 * with an exception set. `views` must be released by the caller (`*acquired`
 * of them). */
static int setup_counting(const char *function, PyObject **objects, Py_buffer *views,
                          int *acquired, IdTable *gt_table, IdTable *pred_table,
                          PairCounter *counter) {
  static const char *names[3] = {"gt_ids", "pred_ids", "counts"};
  for (int k = 0; k < 3; ++k) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (k == 2 ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(objects[k], &views[k], flags) != 0) return -1;
    ++*acquired;
    if (check_itemsize(function, &views[k], 8, names[k]) != 0) return -1;
  }
  Py_ssize_t num_gt = views[0].len / 8, num_pred = views[1].len / 8;
  Py_ssize_t num_counts = views[2].len / 8;
  if (num_pred + 1 > PY_SSIZE_T_MAX / (num_gt + 1) ||
      num_counts != (num_gt + 1) * (num_pred + 1)) {
    PyErr_Format(PyExc_ValueError, "%s: counts has %zd entries, needs (%zd + 1) * (%zd + 1)",
                 function, num_counts, num_gt, num_pred);
    return -1;
  }
  int64_t bad_id = 0;
  int status = id_table_init(gt_table, (const int64_t *)views[0].buf, num_gt, &bad_id);
  if (status == 0) {
    status = id_table_init(pred_table, (const int64_t *)views[1].buf, num_pred, &bad_id);
  }
  if (status == -2) {
    PyErr_NoMemory();
    return -1;
  }
  if (status == -1) {
    PyErr_Format(PyExc_ValueError, "%s: segment id %lld is duplicated or not in [1, 2**32 - 1)",
                 function, (long long)bad_id);
    return -1;
  }
  memset(views[2].buf, 0, (size_t)views[2].len);
  memset(counter, 0, sizeof(*counter));
  memset(counter->cached_cell, 0xFF, sizeof(counter->cached_cell)); /* All -1: empty. */
  counter->gt_table = gt_table;
  counter->pred_table = pred_table;
  counter->counts = (int64_t *)views[2].buf;
  counter->num_columns = num_pred + 1;
  return 0;
}

static PyObject *pair_counts(PyObject *self, PyObject *args) {
  PyObject *maps[2], *objects[3];
  Py_buffer map_views[2], views[3];
  int maps_acquired = 0, acquired = 0;
  PyObject *result = NULL;
  IdTable gt_table = {NULL, NULL, 0, 0}, pred_table = {NULL, NULL, 0, 0};
  PairCounter counter;
  (void)self;
  if (!PyArg_ParseTuple(args, "OOOOO:pair_counts", &maps[0], &maps[1], &objects[0], &objects[1],
                        &objects[2])) {
    return NULL;
  }
  static const char *names[2] = {"gt_map", "pred_map"};
  for (; maps_acquired < 2; ++maps_acquired) {
    if (PyObject_GetBuffer(maps[maps_acquired], &map_views[maps_acquired],
                           PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) {
      goto done;
    }
    if (check_itemsize("pair_counts", &map_views[maps_acquired], 4, names[maps_acquired]) != 0) {
      ++maps_acquired;
      goto done;
    }
  }
  Py_ssize_t num_pixels = map_views[0].len / 4;
  if (map_views[1].len / 4 != num_pixels) {
    PyErr_Format(PyExc_ValueError, "pair_counts: gt_map has %zd pixels but pred_map has %zd",
                 num_pixels, map_views[1].len / 4);
    goto done;
  }
  if (setup_counting("pair_counts", objects, views, &acquired, &gt_table, &pred_table,
                     &counter) != 0) {
    goto done;
  }
  int unknown;
  Py_BEGIN_ALLOW_THREADS
  unknown = count_pairs(&counter, (const uint32_t *)map_views[0].buf,
                        (const uint32_t *)map_views[1].buf, num_pixels);
  if (!unknown) count_pairs_finish(&counter);
  Py_END_ALLOW_THREADS
  result = PyLong_FromLong(unknown);
done:
  id_table_free(&gt_table);
  id_table_free(&pred_table);
  for (int i = 0; i < maps_acquired; ++i) PyBuffer_Release(&map_views[i]);
  for (int i = 0; i < acquired; ++i) PyBuffer_Release(&views[i]);
  return result;
}

/* Unfilters an image row by row into small row buffers (for the fused
 * decode + count, which never holds a whole id map). */
typedef struct {
  const uint8_t *source; /* The next row, filter byte first. */
  Py_ssize_t width, stride, row_index;
  int bpp;
  uint32_t *previous, *current; /* Packed rows; `previous` starts as zeros. */
  uint32_t *ids;                /* RGBA only: the alpha-free ids of `previous`. */
  int bad_filter;
} RowStepper;

/* Returns the ids of the next row, or NULL for an invalid filter type. */
static ALWAYS_INLINE const uint32_t *step_row_bpp(RowStepper *stepper, const int bpp) {
  const uint8_t *source = stepper->source;
  const Py_ssize_t width = stepper->width;
  int filter = source[0];
  stepper->source += stepper->stride + 1;
  ++stepper->row_index;
  if (filter == 2 && all_zero(source + 1, stepper->stride)) {
    return bpp == 4 ? stepper->ids : stepper->previous; /* Same row as above. */
  }
  uint32_t *row = stepper->current;
  if (filter == 2) {
    up_row(source + 1, stepper->previous, row, width, bpp);
  } else if (unfilter_row(filter, source + 1, stepper->previous, row, width, bpp) != 0) {
    stepper->bad_filter = filter;
    return NULL;
  }
  stepper->current = stepper->previous;
  stepper->previous = row;
  if (bpp != 4) return row;
  for (Py_ssize_t x = 0; x < width; ++x) stepper->ids[x] = row[x] & 0xFFFFFFu; /* Drops alpha. */
  return stepper->ids;
}

static const uint32_t *step_row(RowStepper *stepper) {
  switch (stepper->bpp) {
    case 1:
      return step_row_bpp(stepper, 1);
    case 3:
      return step_row_bpp(stepper, 3);
    default:
      return step_row_bpp(stepper, 4);
  }
}

static PyObject *pair_counts_png(PyObject *self, PyObject *args) {
  Py_buffer raws[2], views[3];
  int channels[2];
  Py_ssize_t width, height;
  PyObject *objects[3];
  int acquired = 0;
  PyObject *result = NULL;
  uint32_t *buffers = NULL;
  IdTable gt_table = {NULL, NULL, 0, 0}, pred_table = {NULL, NULL, 0, 0};
  PairCounter counter;
  (void)self;
  if (!PyArg_ParseTuple(args, "y*iy*innOOO:pair_counts_png", &raws[0], &channels[0], &raws[1],
                        &channels[1], &width, &height, &objects[0], &objects[1], &objects[2])) {
    return NULL;
  }
  static const char *what[2] = {"GT PNG", "Prediction PNG"};
  for (int k = 0; k < 2; ++k) {
    if (check_geometry("pair_counts_png", what[k], raws[k].len, width, height, channels[k]) != 0) {
      goto done;
    }
  }
  if (setup_counting("pair_counts_png", objects, views, &acquired, &gt_table, &pred_table,
                     &counter) != 0) {
    goto done;
  }
  /* Per image: previous, current and ids rows. */
  buffers = (uint32_t *)calloc(6 * (size_t)width, sizeof(uint32_t));
  if (buffers == NULL) {
    PyErr_NoMemory();
    goto done;
  }
  RowStepper steppers[2];
  for (int k = 0; k < 2; ++k) {
    steppers[k].source = (const uint8_t *)raws[k].buf;
    steppers[k].width = width;
    steppers[k].stride = width * channels[k];
    steppers[k].row_index = 0;
    steppers[k].bpp = channels[k];
    steppers[k].previous = buffers + (3 * k) * width;
    steppers[k].current = buffers + (3 * k + 1) * width;
    steppers[k].ids = buffers + (3 * k + 2) * width;
    steppers[k].bad_filter = -1;
  }
  int unknown = 0, bad_image = -1;
  Py_BEGIN_ALLOW_THREADS
  for (Py_ssize_t y = 0; y < height && !unknown; ++y) {
    const uint32_t *gt_row = step_row(&steppers[0]);
    const uint32_t *pred_row = step_row(&steppers[1]);
    if (gt_row == NULL || pred_row == NULL) {
      bad_image = gt_row == NULL ? 0 : 1;
      break;
    }
    unknown = count_pairs(&counter, gt_row, pred_row, width);
  }
  if (!unknown && bad_image < 0) count_pairs_finish(&counter);
  Py_END_ALLOW_THREADS
  if (bad_image >= 0) {
    PyErr_Format(PyExc_ValueError, "%s row %zd has invalid filter type %d (must be 0-4)",
                 what[bad_image], steppers[bad_image].row_index - 1,
                 steppers[bad_image].bad_filter);
    goto done;
  }
  result = PyLong_FromLong(unknown);
done:
  free(buffers);
  id_table_free(&gt_table);
  id_table_free(&pred_table);
  for (int i = 0; i < acquired; ++i) PyBuffer_Release(&views[i]);
  PyBuffer_Release(&raws[0]);
  PyBuffer_Release(&raws[1]);
  return result;
}

static PyMethodDef methods[] = {
    {"unfilter_ids", unfilter_ids, METH_VARARGS,
     "unfilter_ids(raw, width, height, channels, out)\n\n"
     "raw: inflated PNG image data (height rows of 1 filter byte + width * channels bytes);\n"
     "out: writable uint32 buffer of >= width * height items, receives R + 256 G + 65536 B\n"
     "(grey: the value). Raises ValueError on bad sizes or filter types."},
    {"pair_counts", pair_counts, METH_VARARGS,
     "pair_counts(gt_map, pred_map, gt_ids, pred_ids, counts) -> int\n\n"
     "gt_map, pred_map: uint32 [N] segment ids; gt_ids, pred_ids: int64 [G], [P] listed ids;\n"
     "counts: writable int64 [(G + 1) * (P + 1)], overwritten with pixel counts per pair\n"
     "(index 0: id 0 / VOID). Returns 0, or 1 (2) if the GT (prediction) map has an unlisted id."},
    {"pair_counts_png", pair_counts_png, METH_VARARGS,
     "pair_counts_png(gt_raw, gt_channels, pred_raw, pred_channels, width, height, gt_ids,\n"
     "                pred_ids, counts) -> int\n\n"
     "pair_counts on two inflated PNGs of the same size (as unfilter_ids takes them), decoded\n"
     "row by row without building id maps. Raises ValueError on bad sizes or filter types."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_pqfast",
    "Native PNG unfiltering and pair counting for PQ evaluation (optional).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__pqfast(void) {
  int simd = 0;
#ifdef HAVE_SSSE3_UP_ROW
  __builtin_cpu_init();
  cpu_has_ssse3 = __builtin_cpu_supports("ssse3") && getenv("KMAX_PQFAST_NO_SIMD") == NULL;
  simd = cpu_has_ssse3;
#endif
  PyObject *result = PyModule_Create(&module);
  /* Whether the SSSE3 row path is in use (KMAX_PQFAST_NO_SIMD turns it off). */
  if (result != NULL && PyModule_AddIntConstant(result, "SSSE3", simd) != 0) {
    Py_DECREF(result);
    return NULL;
  }
  return result;
}
