// Builds src/handler.js into dist/handler.wasm, a component of the
// `full-handler` world of ../../wit/handler.wit. `npm run build`.
import { componentize } from '@bytecodealliance/componentize-js';
import { mkdir, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';

const here = (path) => fileURLToPath(new URL(path, import.meta.url));
const { component } = await componentize({
  sourcePath: here('./src/handler.js'),
  witPath: here('../../wit/handler.wit'),
  worldName: 'full-handler',
});
await mkdir(here('./dist'), { recursive: true });
await writeFile(here('./dist/handler.wasm'), component);
console.log(`dist/handler.wasm: ${component.length} bytes`);
