//! The e5 encoder on the real model file: cross-lingual retrieval, e5's conventions, and a
//! model file that is damaged or not one at all.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use search::format::{FormatError, ModelFile};
use search::model::cosine;
use search::{Encoder, Kernel, ModelError, Role};

const SENTENCES: [&str; 5] = [
    "Italian Renaissance art",
    "arte renacentista italiano",
    "pintura al óleo de un paisaje holandés",
    "Dutch landscape oil painting",
    "modern abstract sculpture in bronze",
];

/// Each cross-lingual pair ranks its partner first among the other sentences.
#[test]
fn cross_lingual_pairs_rank_their_partner_first() {
    let encoder = common::encoder();
    let vectors = encoder.embed(Role::Passage, &SENTENCES).unwrap();
    for (i, partner) in [(0, 1), (1, 0), (2, 3), (3, 2)] {
        let mut others: Vec<(usize, f32)> =
            (0..SENTENCES.len()).filter(|&j| j != i).map(|j| (j, cosine(&vectors[i], &vectors[j]))).collect();
        others.sort_by(|a, b| b.1.total_cmp(&a.1));
        assert_eq!(
            others[0].0, partner,
            "{:?} ranks {:?} first, not {:?}: {others:?}",
            SENTENCES[i], SENTENCES[others[0].0], SENTENCES[partner]
        );
    }
    // And the same across roles: a Spanish query finds the English passage first.
    let passages = encoder.embed(Role::Passage, &SENTENCES).unwrap();
    let query = encoder.embed_query("arte renacentista italiano").unwrap();
    let best = (0..SENTENCES.len())
        .filter(|&j| j != 1)
        .max_by(|&a, &b| cosine(&query, &passages[a]).total_cmp(&cosine(&query, &passages[b])))
        .unwrap();
    assert_eq!(best, 0);
}

/// Unit vectors of the model's size; a batch embeds each text as it would alone; the query and
/// passage prefixes make different vectors.
#[test]
fn vectors_are_unit_length_and_independent_of_the_batch() {
    let encoder = common::encoder();
    assert_eq!(encoder.dim(), 384);
    let batch = encoder.embed(Role::Passage, &SENTENCES).unwrap();
    for (text, vector) in SENTENCES.iter().zip(&batch) {
        assert_eq!(vector.len(), 384);
        let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
        let alone = encoder.embed(Role::Passage, &[text]).unwrap().remove(0);
        assert!(cosine(vector, &alone) > 0.9999, "{text:?} differs when padded in a batch");
    }
    let query = encoder.embed_query(SENTENCES[0]).unwrap();
    let similarity = cosine(&query, &batch[0]);
    assert!(similarity < 0.999 && similarity > 0.8, "query vs passage of the same text: {similarity}");
}

/// The int8 kernel's vectors are the f32 kernel's to a cosine of 0.999 or better, and the
/// cross-lingual test ranks the same under both (`cross_lingual_pairs_rank_their_partner_first`
/// runs with whichever this CPU picks).
#[test]
fn the_int8_kernel_agrees_with_f32() {
    if !search::model::Kernel::best().eq(&Kernel::Int8) {
        eprintln!("skipped: this CPU has no AVX-512 VNNI, so only the f32 kernel runs here");
        assert!(matches!(Encoder::load_with(&common::model_path(), Kernel::Int8), Err(ModelError::Unsupported)));
        return;
    }
    let int8 = common::encoder();
    assert_eq!(int8.kernel(), Kernel::Int8);
    let f32 = Encoder::load_with(&common::model_path(), Kernel::F32).unwrap();
    let long = "Huile sur toile, paysage au moulin, signée et datée en bas à droite. ".repeat(8);
    let texts: Vec<&str> = SENTENCES
        .iter()
        .copied()
        .chain(["Hokusai, Great Wave off Kanagawa, woodblock print", long.as_str(), ""])
        .collect();
    for role in [Role::Passage, Role::Query] {
        let (a, b) = (int8.embed(role, &texts).unwrap(), f32.embed(role, &texts).unwrap());
        for ((text, x), y) in texts.iter().zip(&a).zip(&b) {
            let similarity = cosine(x, y);
            assert!(similarity > 0.999, "{role:?} {text:?}: int8 vs f32 cosine {similarity}");
        }
    }
}

/// Empty, very long and odd text still embeds (a long text is cut to the model's 512 tokens).
#[test]
fn any_text_embeds() {
    let encoder = common::encoder();
    let long = "Öl auf Leinwand, ".repeat(400);
    let texts = ["", "   ", "🎨 \u{0} \t\n", long.as_str(), "日本の木版画、葛飾北斎"];
    for (text, vector) in texts.iter().zip(encoder.embed(Role::Passage, &texts).unwrap()) {
        assert!(vector.iter().all(|v| v.is_finite()), "{text:?}");
        assert_eq!(vector.len(), 384);
    }
}

/// A file that is not a model, or is cut short anywhere, is refused with a reason, never a
/// panic.
#[test]
fn damaged_model_files_are_refused() {
    let bytes = std::fs::read(common::model_path()).unwrap();
    assert!(matches!(ModelFile::parse(b"PK\x03\x04 not a model at all......"), Err(FormatError::Magic(_))));
    for cut in [0, 3, 20, 44, 100, 1_000_000, 4_638_000, bytes.len() / 2, bytes.len() - 1] {
        match Encoder::from_bytes(&bytes[..cut]) {
            Err(ModelError::Format(_)) => {}
            Err(other) => panic!("cut at {cut}: unexpected {other}"),
            Ok(_) => panic!("cut at {cut}: a truncated model loaded"),
        }
    }
    // Header fields out of range: a huge hidden size, too few positions.
    for (offset, value) in [(8usize, 1_000_000u32), (28, 1)] {
        let mut damaged = bytes.clone();
        damaged[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
        assert!(matches!(ModelFile::parse(&damaged), Err(FormatError::Invalid(_))), "field at {offset} = {value}");
    }
    let mut wrong_version = bytes[..64].to_vec();
    wrong_version[4] = 9;
    assert!(matches!(ModelFile::parse(&wrong_version), Err(FormatError::Version(9))));
    let missing = Encoder::load(std::path::Path::new("/nonexistent/e5.bin"));
    assert!(matches!(missing, Err(ModelError::Read { .. })));
}

/// The same tokens and, to rounding, the same vectors as the wheel's own C implementation of
/// this model file (it quantizes activations to 8 bits, as the int8 kernel does and the f32
/// kernel does not), on text
/// that exercises the normalisation map, full-width forms, CJK, emoji and unknown characters.
#[test]
fn agrees_with_the_reference_implementation() {
    let encoder = common::encoder();
    let reference = include_str!("data/e5c-passages.tsv");
    let mut checked = 0;
    for line in reference.lines().filter(|l| !l.starts_with('#')) {
        let mut fields = line.split('\t');
        let (text, tokens, vector) = (fields.next().unwrap(), fields.next().unwrap(), fields.next().unwrap());
        let expected: Vec<f32> = vector.split(' ').map(|v| v.parse().unwrap()).collect();
        assert_eq!(encoder.token_count(Role::Passage, text).unwrap(), tokens.parse::<usize>().unwrap(), "{text:?}");
        let got = encoder.embed(Role::Passage, &[text]).unwrap().remove(0);
        let similarity = cosine(&got, &expected);
        assert!(similarity > 0.999, "{text:?}: cosine {similarity} with the reference");
        checked += 1;
    }
    assert_eq!(checked, 5);
}
