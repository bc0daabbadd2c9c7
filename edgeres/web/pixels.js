// The model input, computed in the browser exactly as Python's edgeres.preprocess.to_pixels does.
//
// One function, toPixels(), so the page and the tests share a single definition: a test runs it
// on real photos and requires byte equality with to_pixels for each resize rule, so any drift on
// either side fails.
//
// Two rules, named as in edgeres.preprocess.Resize and recorded in a bundle's edgeres.json:
//
// - "bilinear" (the default): MediaPipe Tasks' CPU resize. Output pixel x samples source
//   position x * w / W (corner-aligned), rounded to 1/32 pixel, halves up; the four neighbours
//   get integer weights (32 - fx)(32 - fy) ... and the sum is rounded half up; indices past the
//   last row or column repeat it. No antialiasing.
// - "antialias" (edgeres 0.1 bundles): Pillow's Image.resize(..., BILINEAR). Its fixed-point
//   arithmetic is copied step by step: per-output-pixel double coefficients normalised to sum 1,
//   rounded to 22-bit integers, one pass rounded to uint8, then the other (Pillow >= 13 runs the
//   vertical pass first when the height shrinks more than twice as much as the width).
//
// Every intermediate value is an exact integer or the same IEEE double as in numpy / C, so the
// result is bit-identical.

export const RESIZE_RULES = ['bilinear', 'antialias'];

/**
 * Model input for one image: RGB uint8, `outH x outW x 3`, row-major (HWC), as to_pixels returns.
 *
 * @param {Uint8ClampedArray|Uint8Array} data pixels of the source image, `channels` per pixel
 *     (4 for canvas ImageData RGBA, whose alpha is ignored; 3 for RGB)
 * @param {number} width source width
 * @param {number} height source height
 * @param {number} outW model input width
 * @param {number} outH model input height
 * @param {{channels?: number, resize?: string}} [options] resize: "bilinear" (default) or "antialias"
 * @returns {Uint8Array}
 */
export function toPixels(data, width, height, outW, outH, { channels = 4, resize = 'bilinear' } = {}) {
  if (!RESIZE_RULES.includes(resize)) throw new Error(`unknown resize rule ${resize}; known: ${RESIZE_RULES}`);
  if (width === outW && height === outH) return resamplePass(data, width, height, channels, null, null);
  if (resize === 'bilinear') return resizeCornerAligned(data, width, height, outW, outH, channels);
  // Pillow >= 13 runs the vertical pass first when the height shrinks more than twice as
  // much as the width (a speed choice that changes the rounding of the intermediate image).
  const verticalFirst = height - outH > 0 && height - outH > (width - outW) * 2;
  const horiz = width !== outW ? bilinearCoefficients(width, outW) : null;
  const vert = height !== outH ? bilinearCoefficients(height, outH) : null;
  if (verticalFirst) {
    const tmp = vert ? resamplePass(data, width, height, channels, null, vert) : data;
    return resamplePass(tmp, width, outH, vert ? 3 : channels, horiz, null);
  }
  // Horizontal first, on the source rows the vertical pass will read only (as Pillow does).
  let rows = [0, height];
  if (vert) {
    const last = (outH - 1) * 2;
    rows = [vert.bounds[0], vert.bounds[last] + vert.bounds[last + 1]];
  }
  const tmp = horiz ? resamplePass(data, width, height, channels, horiz, null, rows) : data;
  if (!vert) return tmp;
  return resamplePass(tmp, outW, rows[1] - rows[0], horiz ? 3 : channels, null, vert, null,
                      horiz ? rows[0] : 0);
}

// -- "bilinear": corner-aligned, 1/32-pixel fixed point ------------------------------------------

function sampleAxis(nOut, nIn) {
  const i0 = new Int32Array(nOut), i1 = new Int32Array(nOut), frac = new Int32Array(nOut);
  for (let x = 0; x < nOut; x++) {
    const pos = Math.floor((64 * x * nIn + nOut) / (2 * nOut)); // 32 * x * nIn / nOut, halves up (exact integers)
    const i = Math.floor(pos / 32);
    frac[x] = pos - i * 32;
    i0[x] = Math.min(Math.max(i, 0), nIn - 1);
    i1[x] = Math.min(Math.max(i + 1, 0), nIn - 1);
  }
  return { i0, i1, frac };
}

function resizeCornerAligned(data, width, height, outW, outH, channels) {
  const ys = sampleAxis(outH, height), xs = sampleAxis(outW, width);
  const out = new Uint8Array(outW * outH * 3);
  for (let y = 0; y < outH; y++) {
    const r0 = ys.i0[y] * width, r1 = ys.i1[y] * width, fy = ys.frac[y];
    for (let x = 0; x < outW; x++) {
      const fx = xs.frac[x];
      const a = (r0 + xs.i0[x]) * channels, b = (r0 + xs.i1[x]) * channels;
      const c = (r1 + xs.i0[x]) * channels, d = (r1 + xs.i1[x]) * channels;
      const o = (y * outW + x) * 3;
      for (let k = 0; k < 3; k++) {
        const top = data[a + k] * (32 - fx) + data[b + k] * fx;
        const bottom = data[c + k] * (32 - fx) + data[d + k] * fx;
        out[o + k] = (top * (32 - fy) + bottom * fy + 512) >> 10;
      }
    }
  }
  return out;
}

// -- "antialias": Pillow's BILINEAR ----------------------------------------------------------------

const PRECISION_BITS = 22; // 32 - 8 - 2, as in Pillow's Resample.c
const ONE = 1 << PRECISION_BITS;
const HALF = 1 << (PRECISION_BITS - 1);

function bilinearCoefficients(inSize, outSize) {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1.0);
  const support = 1.0 * filterScale; // the triangle filter has support 1
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const weights = new Int32Array(outSize * ksize);
  const k = new Float64Array(ksize);
  const ss = 1.0 / filterScale;
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    let ww = 0.0;
    for (let x = 0; x < xmax; x++) {
      let t = (x + xmin - center + 0.5) * ss;
      if (t < 0) t = -t;
      const w = t < 1.0 ? 1.0 - t : 0.0;
      k[x] = w;
      ww += w;
    }
    for (let x = 0; x < xmax; x++) {
      const w = ww !== 0.0 ? k[x] / ww : k[x];
      weights[xx * ksize + x] = w < 0 ? Math.trunc(-0.5 + w * ONE) : Math.trunc(0.5 + w * ONE);
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, bounds, weights };
}

function clip8(acc) {
  // Pillow: lookup[acc >> 22] over -640..639, i.e. floor, then clamp to 0..255.
  const v = Math.floor(acc / ONE);
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

// One separable pass (horizontal when `horiz` is given, vertical when `vert` is, a copy when
// neither) from `channels`-per-pixel input to RGB output. `rows` limits a horizontal pass to
// source rows [first, last); `shift` is subtracted from the vertical bounds when the input
// starts at source row `shift`.
function resamplePass(src, width, height, channels, horiz, vert, rows = null, shift = 0) {
  if (horiz) {
    const [first, last] = rows || [0, height];
    const outW = horiz.bounds.length / 2;
    const out = new Uint8Array(outW * (last - first) * 3);
    for (let yy = first; yy < last; yy++) {
      const rowIn = yy * width * channels;
      for (let xx = 0; xx < outW; xx++) {
        const xmin = horiz.bounds[xx * 2], xmax = horiz.bounds[xx * 2 + 1];
        const kb = xx * horiz.ksize;
        let r = HALF, g = HALF, b = HALF;
        for (let x = 0; x < xmax; x++) {
          const w = horiz.weights[kb + x];
          const i = rowIn + (x + xmin) * channels;
          r += src[i] * w; g += src[i + 1] * w; b += src[i + 2] * w;
        }
        const o = ((yy - first) * outW + xx) * 3;
        out[o] = clip8(r); out[o + 1] = clip8(g); out[o + 2] = clip8(b);
      }
    }
    return out;
  }
  if (vert) {
    const outH = vert.bounds.length / 2;
    const out = new Uint8Array(width * outH * 3);
    for (let yy = 0; yy < outH; yy++) {
      const ymin = vert.bounds[yy * 2] - shift, ymax = vert.bounds[yy * 2 + 1];
      const kb = yy * vert.ksize;
      for (let xx = 0; xx < width; xx++) {
        let r = HALF, g = HALF, b = HALF;
        for (let y = 0; y < ymax; y++) {
          const w = vert.weights[kb + y];
          const i = ((y + ymin) * width + xx) * channels;
          r += src[i] * w; g += src[i + 1] * w; b += src[i + 2] * w;
        }
        const o = (yy * width + xx) * 3;
        out[o] = clip8(r); out[o + 1] = clip8(g); out[o + 2] = clip8(b);
      }
    }
    return out;
  }
  const out = new Uint8Array(width * height * 3);
  for (let i = 0, o = 0; o < out.length; i += channels, o += 3) {
    out[o] = src[i]; out[o + 1] = src[i + 1]; out[o + 2] = src[i + 2];
  }
  return out;
}
