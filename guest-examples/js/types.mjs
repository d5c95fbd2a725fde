// Generates TypeScript declarations of ../../wit/handler.wit (the
// `full-handler` world, guest side) into types/, so editors know the API.
// `npm run types`. The WIT is passed as text: jco's sandboxed generator
// cannot read paths outside its own folder.
import { $init, generateTypes } from '@bytecodealliance/jco-transpile/component';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = (path) => fileURLToPath(new URL(path, import.meta.url));
await $init;
const source = await readFile(here('../../wit/handler.wit'), 'utf8');
const files = generateTypes('handler', {
  wit: { tag: 'source', val: source },
  world: 'full-handler',
  guest: true,
  tlaCompat: false,
  features: { tag: 'list', val: [] },
});
for (const [name, bytes] of files) {
  const path = here(`./types/${name}`);
  await mkdir(dirname(path), { recursive: true });
  await writeFile(path, bytes);
  console.log(`types/${name}`);
}
