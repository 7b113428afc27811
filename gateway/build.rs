//! Bundles the bidder page (`web/`, TypeScript) with esbuild into OUT_DIR, where `src/web.rs`
//! embeds it: `gavel dev` then needs nothing but the binary. `scripts/setup` installs the
//! npm packages (`npm ci`, checksums from package-lock.json); nothing is fetched here.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let web = PathBuf::from("web");
    for path in ["src", "index.html", "build.mjs", "package.json", "package-lock.json"] {
        println!("cargo::rerun-if-changed=web/{path}");
    }
    println!("cargo::rerun-if-env-changed=GAVEL_NODE");
    let Some(out_dir) = std::env::var_os("OUT_DIR") else {
        println!("cargo::error=OUT_DIR is not set");
        return;
    };
    let out = PathBuf::from(out_dir).join("web");
    if !web.join("node_modules/esbuild").is_dir() {
        println!("cargo::error=the page's npm packages are missing: run scripts/setup (or `npm ci` in gateway/web)");
        return;
    }
    let node = std::env::var("GAVEL_NODE").unwrap_or_else(|_| "node".to_owned());
    let status = Command::new(&node).arg(web.join("build.mjs")).env("GAVEL_WEB_OUT", &out).status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => println!("cargo::error=bundling the page (web/build.mjs) failed: {s}"),
        Err(e) => println!("cargo::error=cannot run {node} to bundle the page: {e} (install Node.js: scripts/setup)"),
    }
}
