//! Prints e5 embeddings, one line per text: `embed MODEL passage|query TEXT...`. For checking
//! the encoder against another implementation of the same model file.

use std::path::PathBuf;

use search::{Encoder, Role};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, role, texts @ ..] = args.as_slice() else {
        return Err("usage: embed MODEL passage|query TEXT...".into());
    };
    let role = if role == "query" { Role::Query } else { Role::Passage };
    let encoder = Encoder::load(&PathBuf::from(model))?;
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    for vector in encoder.embed(role, &texts)? {
        let line: Vec<String> = vector.iter().map(|v| format!("{v:.6}")).collect();
        println!("{}", line.join(" "));
    }
    Ok(())
}
