// Copies the pinned LiteRT.js files from node_modules/ into edgeres/web/vendor/, where
// `edgeres serve` serves them (and where a wheel built afterwards picks them up).
// Run by `npm ci` / `npm install` (package.json "postinstall"); safe to run again.
import { cpSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const web = dirname(fileURLToPath(import.meta.url));
const root = join(web, '..', '..');
const modules = join(root, 'node_modules');
const vendor = join(web, 'vendor');

const copies = [
  ['@litertjs/core/dist/index.js', 'litertjs/core/index.js'],
  ['@litertjs/wasm-utils/dist/index.js', 'litertjs/wasm-utils/index.js'],
];
// The plain, compatibility (no relaxed SIMD) and threaded builds; the JSPI build is for
// WebGPU/WebNN partitioning, which the page does not use.
for (const build of ['litert_wasm_internal', 'litert_wasm_compat_internal', 'litert_wasm_threaded_internal']) {
  for (const ext of ['.js', '.wasm']) copies.push([`@litertjs/core/wasm/${build}${ext}`, `litertjs/wasm/${build}${ext}`]);
}

rmSync(vendor, { recursive: true, force: true });
const versions = {};
for (const [from, to] of copies) {
  const src = join(modules, from);
  if (!existsSync(src)) {
    console.error(`copy_vendor: ${src} is missing; run \`npm ci\` in ${root}`);
    process.exit(1);
  }
  mkdirSync(dirname(join(vendor, to)), { recursive: true });
  cpSync(src, join(vendor, to));
  const pkg = from.split('/').slice(0, 2).join('/');
  versions[pkg] = JSON.parse(readFileSync(join(modules, pkg, 'package.json'), 'utf8')).version;
}
writeFileSync(join(vendor, 'VERSIONS.json'), JSON.stringify(versions, null, 1) + '\n');
console.log(`copy_vendor: ${copies.length} files into ${vendor} (${Object.entries(versions).map(([k, v]) => `${k}@${v}`).join(', ')})`);
