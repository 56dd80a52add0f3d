// vendor.mjs copies the browser files of the packages package-lock.json
// pins (as installed by `npm ci`, which checks each tarball against the
// lockfile's integrity hash) into the embedded assets, and records what it
// copied in ../vendor.json. The Go test TestVendoredFilesMatchLockfile
// holds the committed files, that record and the lockfile to each other,
// so `go build` needs no npm and the vendored code cannot drift unnoticed.
// Run through `make dashboard-vendor`.
import { createHash } from 'node:crypto';
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, '..', 'static', 'assets', 'vendor');

// package → [file in the package, name under static/assets/vendor]
const files = {
  uplot: [
    ['dist/uPlot.iife.min.js', 'uPlot.iife.min.js'],
    ['dist/uPlot.min.css', 'uPlot.min.css'],
    ['LICENSE', 'uPlot.LICENSE.txt'],
  ],
};

const lock = JSON.parse(readFileSync(join(here, 'package-lock.json'), 'utf8'));
mkdirSync(out, { recursive: true });
const manifest = { note: 'written by make dashboard-vendor (controller/dashboard/web/vendor.mjs); do not edit', packages: {} };
for (const [pkg, list] of Object.entries(files)) {
  const locked = lock.packages['node_modules/' + pkg];
  const installed = JSON.parse(readFileSync(join(here, 'node_modules', pkg, 'package.json'), 'utf8'));
  if (!locked || installed.version !== locked.version) {
    throw new Error(`${pkg}: node_modules holds ${installed.version}, the lockfile pins ${locked && locked.version}; run npm ci`);
  }
  const entry = { version: locked.version, integrity: locked.integrity, files: {} };
  for (const [src, dst] of list) {
    const data = readFileSync(join(here, 'node_modules', pkg, src));
    copyFileSync(join(here, 'node_modules', pkg, src), join(out, dst));
    entry.files[dst] = 'sha256:' + createHash('sha256').update(data).digest('hex');
  }
  manifest.packages[pkg] = entry;
}
writeFileSync(join(here, '..', 'vendor.json'), JSON.stringify(manifest, null, 2) + '\n');
