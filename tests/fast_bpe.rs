//! The fast byte-level BPE engine against Hugging Face `tokenizers`, the reference: the same
//! ids for every text, on tokenizers trained here (nothing downloaded) in the shapes current
//! models ship (GPT-2's `ByteLevel`; Llama 3's `Split` + `ByteLevel` with `ignore_merges`; a
//! prefix space and a template adding special tokens; added tokens of both kinds), on random
//! and adversarial strings. Tokenizers the engine does not reproduce fall back to
//! `tokenizers` under `auto` and are refused under `fast`.

#![cfg(feature = "ingest")]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use proptest::prelude::*;
use serde_json::{Value, json};
use shardflow::ingest::encode::{Encoder, Engine};
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, NormalizerWrapper, Tokenizer, TokenizerBuilder};

const EOT: &str = "<|endoftext|>";
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Fragments that exercise every branch of the split patterns, the added tokens and the
/// character classes where engines could disagree (Unicode spaces, letters and numbers of
/// other scripts, case folding in Llama 3's `(?i:...)`, combining marks, emoji, controls).
const FRAGMENTS: &[&str] = &[
    "the",
    "The",
    " quick",
    "brown",
    "fox",
    "'s",
    "'S",
    "'t",
    "'re",
    "'RE",
    "'ve",
    "'m",
    "'ll",
    "'d",
    "'x",
    "don't",
    "IT'S",
    "ſ",
    "K",
    "ǅ",
    "42",
    "3.14159",
    "1234567",
    "٣٤٥",
    "Ⅻ",
    "²",
    "½",
    " ",
    "  ",
    "   ",
    "\t",
    "\n",
    "\n\n",
    "\r\n",
    "\r",
    " \n",
    "\n ",
    "\u{a0}",
    "\u{3000}",
    "\u{2028}",
    "\u{85}",
    "\u{200b}",
    "\u{feff}",
    "\u{0}",
    "\u{7f}",
    "!",
    "?!",
    "...",
    "--",
    "\"",
    "(",
    ")",
    "[x]",
    "{}",
    "#",
    "@user",
    "http://example.com/a?b=c",
    "é",
    "e\u{301}",
    "naïve",
    "Straße",
    "Ελληνικά",
    "русский",
    "中文字符",
    "日本語",
    "한국어",
    "עברית",
    "العربية",
    "हिन्दी",
    "🙂",
    "👩‍👩‍👧",
    "🇫🇷",
    "\u{1F600}\u{1F600}",
    "\u{10FFFF}",
    "\u{E000}",
    "<|endoftext|>",
    "<|endo",
    "<|",
    "|>",
    "<pad>",
    "the quick",
    " the quick",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "ab",
    "abc",
    "bcbc",
];

/// Training text: the fragments in many combinations, so merges exist across all of them.
fn corpus() -> Vec<String> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..3000)
        .map(|_| {
            let n = 5 + next() % 40;
            (0..n)
                .map(|_| {
                    let f = FRAGMENTS[(next() % FRAGMENTS.len() as u64) as usize];
                    if next() % 3 == 0 {
                        format!(" {f}")
                    } else {
                        f.to_owned()
                    }
                })
                .collect()
        })
        .collect()
}

/// GPT-2's shape, trained here: BPE (vocabulary 3000), `ByteLevel` without a prefix space,
/// `<|endoftext|>` special. Its JSON is the base the other shapes are edited from.
fn gpt2() -> &'static Value {
    static JSON: OnceLock<Value> = OnceLock::new();
    JSON.get_or_init(|| {
        let mut trainer = BpeTrainerBuilder::new()
            .show_progress(false)
            .vocab_size(3000)
            .min_frequency(0)
            .special_tokens(vec![AddedToken::from(EOT, true)])
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let byte_level = ByteLevel::new(false, true, true);
        let mut tokenizer = TokenizerBuilder::new()
            .with_model(BPE::default())
            .with_normalizer(None::<NormalizerWrapper>)
            .with_pre_tokenizer(Some(byte_level))
            .with_post_processor(Some(byte_level))
            .with_decoder(Some(byte_level))
            .build()
            .unwrap();
        tokenizer.train(&mut trainer, corpus().into_iter()).unwrap();
        serde_json::from_str(&tokenizer.to_string(false).unwrap()).unwrap()
    })
}

fn tokenizer_of(json: &Value) -> Tokenizer {
    json.to_string().parse().unwrap()
}

/// The shapes under test, by name.
fn shape(name: &str) -> Tokenizer {
    let mut json = gpt2().clone();
    match name {
        "gpt2" => {}
        "llama3" => {
            json["pre_tokenizer"] = json!({
                "type": "Sequence",
                "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN},
                     "behavior": "Isolated", "invert": false},
                    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                     "use_regex": false},
                ],
            });
            json["model"]["ignore_merges"] = json!(true);
        }
        "prefix-space" => {
            json["pre_tokenizer"]["add_prefix_space"] = json!(true);
        }
        "duplicate-merges" => {
            // Two merges make the same token ("a" + "bc", "ab" + "c"): queue entries of one go
            // stale in ways only the merged-id check of `tokenizers` resolves.
            let model = &mut json["model"];
            let mut next_id = model["vocab"].as_object().unwrap().len() as u64 + 1000;
            for token in ["ab", "bc", "abc", "ca", "cab"] {
                if model["vocab"].get(token).is_none() {
                    model["vocab"][token] = json!(next_id);
                    next_id += 1;
                }
            }
            model["merges"] = json!([
                ["b", "c"],
                ["a", "bc"],
                ["a", "b"],
                ["ab", "c"],
                ["c", "a"],
                ["c", "ab"]
            ]);
        }
        other => panic!("no shape {other}"),
    }
    let mut tokenizer = tokenizer_of(&json);
    match name {
        "llama3" => {
            tokenizer.add_special_tokens(&[AddedToken::from("<|begin_of_text|>", true)]);
            let bos = tokenizer.token_to_id("<|begin_of_text|>").unwrap();
            tokenizer.with_post_processor(Some(
                TemplateProcessing::builder()
                    .try_single("<|begin_of_text|> $A")
                    .unwrap()
                    .special_tokens(vec![("<|begin_of_text|>", bos)])
                    .build()
                    .unwrap(),
            ));
        }
        "prefix-space" => {
            // A non-special token matched on "normalized" text, one on the raw text that
            // overlaps the special one, and a template with a token after the sequence.
            tokenizer.add_tokens(&[AddedToken::from("the quick", false)]);
            tokenizer.add_tokens(&[AddedToken::from("<|endo", false).normalized(false)]);
            tokenizer.add_special_tokens(&[AddedToken::from("<pad>", true)]);
            let eot = tokenizer.token_to_id(EOT).unwrap();
            tokenizer.with_post_processor(Some(
                TemplateProcessing::builder()
                    .try_single(format!("$A {EOT}").as_str())
                    .unwrap()
                    .special_tokens(vec![(EOT, eot)])
                    .build()
                    .unwrap(),
            ));
        }
        _ => {}
    }
    tokenizer
}

const SHAPES: [&str; 4] = ["gpt2", "llama3", "prefix-space", "duplicate-merges"];

/// The reference tokenizer and both engines for each shape, built once.
fn engines() -> &'static Vec<(&'static str, Tokenizer, Encoder)> {
    static ENGINES: OnceLock<Vec<(&'static str, Tokenizer, Encoder)>> = OnceLock::new();
    ENGINES.get_or_init(|| {
        SHAPES
            .iter()
            .map(|&name| {
                let tokenizer = shape(name);
                let fast = Encoder::from_tokenizer(tokenizer.clone(), Path::new(name))
                    .unwrap()
                    .with_engine(Engine::Fast)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(fast.engine(), "fast");
                (name, tokenizer, fast)
            })
            .collect()
    })
}

/// Checks the fast engine's ids of `texts` against `tokenizers`', one session for all (so the
/// word cache is exercised too).
fn check_all(texts: &[String]) -> Result<(), TestCaseError> {
    for (name, tokenizer, fast) in engines() {
        let mut session = fast.session();
        for text in texts {
            let expected = tokenizer
                .encode_fast(text.as_str(), true)
                .unwrap()
                .get_ids()
                .to_vec();
            let mut got = Vec::new();
            session.encode(text, &mut got).unwrap();
            prop_assert_eq!(&got, &expected, "shape {}, text {:?}", name, text);
        }
    }
    Ok(())
}

#[test]
fn the_training_corpus_encodes_identically() {
    check_all(&corpus()).unwrap();
}

#[test]
fn edge_texts_encode_identically() {
    let mut texts: Vec<String> = [
        "",
        " ",
        "  ",
        "\n",
        "a",
        " a",
        "a ",
        "  a",
        "a  ",
        "\t\tx",
        "x \n\n y",
        "  \u{a0}x",
        "\u{3000}\u{3000}中",
        "'s",
        " 's",
        "''s",
        "<|endoftext|>",
        "x<|endoftext|>y",
        " <|endoftext|> ",
        "<|endo<|endoftext|>",
        "<pad><pad>",
        "the quickthe quick",
        "abcabcab",
        "cabcab",
        "bcabc",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    texts.extend(FRAGMENTS.iter().map(|s| s.to_string()));
    texts.push("a".repeat(5000));
    texts.push(" ".repeat(600) + "x");
    texts.push("😀".repeat(300));
    texts.push(FRAGMENTS.concat().repeat(3));
    check_all(&texts).unwrap();
}

fn fragment_text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            3 => prop::sample::select(FRAGMENTS).prop_map(str::to_owned),
            1 => any::<char>().prop_map(String::from),
            1 => "[ \\t\\n\\r\u{a0}]{1,4}",
            1 => "[abc]{1,12}",
        ],
        0..40,
    )
    .prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn random_texts_encode_identically(texts in prop::collection::vec(fragment_text(), 1..8)) {
        check_all(&texts)?;
    }

    #[test]
    fn arbitrary_strings_encode_identically(texts in prop::collection::vec(any::<String>(), 1..8)) {
        check_all(&texts)?;
    }
}

#[test]
fn what_the_fast_engine_does_not_reproduce_falls_back() {
    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: [(&str, Edit, &str); 5] = [
        (
            "nfc",
            Box::new(|j| j["normalizer"] = json!({"type": "NFC"})),
            "normalizer",
        ),
        (
            "dropout",
            Box::new(|j| j["model"]["dropout"] = json!(0.1)),
            "dropout",
        ),
        (
            "suffix",
            Box::new(|j| j["model"]["end_of_word_suffix"] = json!("</w>")),
            "end_of_word_suffix",
        ),
        (
            "word-split",
            Box::new(|j| {
                j["pre_tokenizer"] = json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": r"\w+|\W+"}, "behavior": "Isolated", "invert": false},
                    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]})
            }),
            "\\w",
        ),
        (
            "whitespace",
            Box::new(|j| j["pre_tokenizer"] = json!({"type": "Whitespace"})),
            "ByteLevel",
        ),
    ];
    for (name, edit, reason) in cases {
        let mut json = gpt2().clone();
        edit(&mut json);
        let tokenizer = tokenizer_of(&json);
        let auto = Encoder::from_tokenizer(tokenizer.clone(), Path::new(name)).unwrap();
        assert_eq!(auto.engine(), "hf", "{name}");
        let why = auto.fallback_reason().unwrap();
        assert!(why.contains(reason), "{name}: {why}");
        if name != "dropout" {
            // (BPE dropout draws random merges: no two encodings need agree.)
            let mut ids = Vec::new();
            auto.encode("Straße  naïve 42", &mut ids).unwrap();
            assert_eq!(
                ids,
                tokenizer
                    .encode_fast("Straße  naïve 42", true)
                    .unwrap()
                    .get_ids()
            );
        }
        let err = Encoder::from_tokenizer(tokenizer, &PathBuf::from(format!("{name}.json")))
            .unwrap()
            .with_engine(Engine::Fast)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("{name}.json")) && err.contains(reason),
            "{err}"
        );
    }
    let hf = Encoder::from_tokenizer(tokenizer_of(gpt2()), Path::new("gpt2"))
        .unwrap()
        .with_engine(Engine::Hf)
        .unwrap();
    assert_eq!(hf.engine(), "hf");
    assert!(
        "turbo"
            .parse::<Engine>()
            .unwrap_err()
            .to_string()
            .contains("turbo")
    );
}
