// Bundles the page into $GAVEL_WEB_OUT (default dist/): index.html, app.js, app.css.
// The gateway's build script runs this with GAVEL_WEB_OUT in cargo's OUT_DIR and embeds the
// result in the `gavel` binary.
import { build } from "esbuild";
import { copyFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = process.env.GAVEL_WEB_OUT || join(here, "dist");
mkdirSync(out, { recursive: true });
await build({
  entryPoints: [join(here, "src/app.ts"), join(here, "src/app.css")],
  bundle: true,
  minify: true,
  target: "es2020",
  outdir: out,
  entryNames: "[name]",
  logLevel: "warning",
});
copyFileSync(join(here, "index.html"), join(out, "index.html"));
