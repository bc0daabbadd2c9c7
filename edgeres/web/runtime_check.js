// The page checks its own runtime (issue 22): the bundle records, for a set of probe photos,
// the raw uint8 outputs of its int8 model on each runtime edgeres ran it on at export
// (edgeres.json "runtimes"). Here LiteRT.js (WebAssembly, another runtime) runs the same
// probes, and the page shows how its outputs compare with each record:
//   "WebAssembly vs xnnpack/x86_64: 46/48 identical, max 2 steps, 0 flips"
// A step is one unit of the uint8 output; a flip is a probe whose top class differs.

export const RUNTIME_NAME = 'wasm';

/** Compare outputs (arrays of uint8 rows, one per probe) with a recorded runtime's. */
export function compareOutputs(mine, theirs) {
  let identical = 0, maxSteps = 0, flips = 0, sumSteps = 0;
  for (let i = 0; i < mine.length; i++) {
    const a = mine[i], b = theirs[i];
    let same = a.length === b.length;
    for (let k = 0; k < Math.min(a.length, b.length); k++) {
      const d = Math.abs(a[k] - b[k]);
      if (d) same = false;
      maxSteps = Math.max(maxSteps, d);
      sumSteps += d;
    }
    if (same) identical++;
    if (argmax(a) !== argmax(b)) flips++;
  }
  const values = mine.reduce((n, row) => n + row.length, 0);
  return { n: mine.length, identical, max_steps: maxSteps, flips,
           mean_steps: values ? sumSteps / values : 0 };
}

function argmax(row) { // the first of equal maxima, as numpy.argmax
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
  return best;
}

/** One line per recorded runtime, in the words the page shows. */
export function describe(check, tolerance) {
  return Object.entries(check.against).map(([name, c]) => {
    const verdict = tolerance == null ? '' : c.max_steps <= tolerance ? ` (within ${tolerance})` : ` (beyond the bundle's tolerance of ${tolerance})`;
    return `WebAssembly vs ${name}: ${c.identical}/${c.n} identical, max ${c.max_steps} step${c.max_steps === 1 ? '' : 's'}${verdict}, ${c.flips} flip${c.flips === 1 ? '' : 's'}`;
  });
}

/**
 * Run the probes through `run(uint8Pixels) -> uint8 output row` and compare with every record.
 * `runtimes` is config.json's block: {model, probes: {url, n, shape}, outputs, tolerance_steps}.
 */
export async function checkRuntime(runtimes, run, { fetchBytes, onProgress = () => {} }) {
  const [n, h, w, c] = runtimes.probes.shape;
  const bytes = new Uint8Array(await fetchBytes(runtimes.probes.url));
  if (bytes.length !== n * h * w * c) {
    throw new Error(`${runtimes.probes.url}: ${bytes.length} bytes, expected ${n}x${h}x${w}x${c}`);
  }
  const outputs = [];
  for (let i = 0; i < n; i++) {
    const row = await run(bytes.subarray(i * h * w * c, (i + 1) * h * w * c));
    outputs.push(Array.from(row));
    onProgress(i + 1, n);
  }
  const against = {};
  for (const [name, recorded] of Object.entries(runtimes.outputs)) against[name] = compareOutputs(outputs, recorded);
  return { runtime: RUNTIME_NAME, model: runtimes.model, n, tolerance_steps: runtimes.tolerance_steps ?? null,
           outputs, against };
}
