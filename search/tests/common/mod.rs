//! The model file the tests use: `GAVEL_MODEL`, else the one `scripts/setup` installs.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use search::Encoder;

pub fn model_path() -> PathBuf {
    std::env::var_os("GAVEL_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/e5-small-q4.bin"))
}

/// One encoder per test binary (loading takes a second and 150 MB).
pub fn encoder() -> Arc<Encoder> {
    static ENCODER: OnceLock<Arc<Encoder>> = OnceLock::new();
    ENCODER
        .get_or_init(|| {
            let path = model_path();
            match Encoder::load(&path) {
                Ok(encoder) => Arc::new(encoder),
                Err(e) => panic!("{e}: run scripts/setup to install the model (or set GAVEL_MODEL)"),
            }
        })
        .clone()
}
