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
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

mod common;

use common::bpe::{EOT, train_byte_level};
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const O200K_PATTERN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
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
    "quickbrown",
    " quickbrown",
    "<sn>",
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
        let tokenizer = train_byte_level(corpus().into_iter(), 3000, 0);
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
            // Whole words merges never build, which `ignore_merges` takes as they are.
            let next_id = json["model"]["vocab"].as_object().unwrap().len() as u64;
            json["model"]["vocab"]["quickbrown"] = json!(next_id);
            json["model"]["vocab"]["Ġquickbrown"] = json!(next_id + 1);
        }
        "split-then-gpt2" => {
            // A Split before ByteLevel's own regex, with a prefix space added to each piece.
            json["pre_tokenizer"] = json!({
                "type": "Sequence",
                "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": r"\S+|\s+"},
                     "behavior": "Isolated", "invert": false},
                    {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                     "use_regex": true},
                ],
            });
            json["normalizer"] = json!({"type": "Sequence", "normalizers": []});
            json["post_processor"] = json!({
                "type": "RobertaProcessing", "sep": [EOT, 0], "cls": ["<|endo", 1],
                "trim_offsets": true, "add_prefix_space": true,
            });
        }
        "qwen2" | "o200k" => {
            let pattern = if name == "qwen2" {
                QWEN2_PATTERN
            } else {
                O200K_PATTERN
            };
            json["pre_tokenizer"] = json!({
                "type": "Sequence",
                "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": pattern},
                     "behavior": "Isolated", "invert": false},
                    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                     "use_regex": false},
                ],
            });
            json["post_processor"] =
                json!({"type": "BertProcessing", "sep": ["|>", 2], "cls": ["<|", 3]});
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
            // overlaps the special one, a special one matched on "normalized" text, one the
            // model's vocabulary has, and a template with a token after the sequence.
            tokenizer.add_tokens(&[AddedToken::from("the quick", false)]);
            tokenizer.add_tokens(&[AddedToken::from("<|endo", false).normalized(false)]);
            tokenizer.add_special_tokens(&[AddedToken::from("<pad>", true)]);
            tokenizer.add_special_tokens(&[AddedToken::from("<sn>", true).normalized(true)]);
            tokenizer.add_tokens(&[AddedToken::from("fox", false)]);
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

const SHAPES: [&str; 7] = [
    "gpt2",
    "llama3",
    "prefix-space",
    "duplicate-merges",
    "split-then-gpt2",
    "qwen2",
    "o200k",
];

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

/// The first text of `texts` whose ids from the fast engine (one session for all, so that its
/// word cache is exercised too) differ from `tokenizers`': the text, the fast ids, the reference.
fn first_mismatch(
    tokenizer: &Tokenizer,
    fast: &Encoder,
    texts: &[String],
) -> Option<(String, Vec<u32>, Vec<u32>)> {
    let mut session = fast.session();
    texts.iter().find_map(|text| {
        let expected = tokenizer
            .encode_fast(text.as_str(), true)
            .unwrap()
            .get_ids()
            .to_vec();
        let mut got = Vec::new();
        session.encode(text, &mut got).unwrap();
        (got != expected).then(|| (text.clone(), got, expected))
    })
}

/// Checks the fast engine's ids of `texts` against `tokenizers`' for every shape.
fn check_all(texts: &[String]) -> Result<(), TestCaseError> {
    for (name, tokenizer, fast) in engines() {
        if let Some((text, got, expected)) = first_mismatch(tokenizer, fast, texts) {
            prop_assert_eq!(got, expected, "shape {}, text {:?}", name, text);
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

/// A tokenizer splitting with `pattern` (`Split`, then `ByteLevel` without its regex).
fn split_shape(pattern: &str) -> Tokenizer {
    let mut json = gpt2().clone();
    json["pre_tokenizer"] = json!({
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated",
             "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
             "use_regex": false},
        ],
    });
    tokenizer_of(&json)
}

/// The ids of `texts` from the fast engine and from `tokenizers`, which must agree.
fn assert_same_ids(tokenizer: &Tokenizer, fast: &Encoder, texts: &[String], what: &str) {
    if let Some((text, got, expected)) = first_mismatch(tokenizer, fast, texts) {
        assert_eq!(got, expected, "{what}: {text:?}");
    }
}

/// Every character class of the split patterns, over every Unicode scalar value: where the
/// two regex engines put a character in different classes the pieces differ, and so do the
/// ids. (Their Unicode versions must agree for this to pass.)
#[test]
fn every_code_point_is_classed_as_oniguruma_classes_it() {
    let pattern = r"\p{Lu}+|\p{Ll}+|\p{Lt}+|\p{Lm}+|\p{Lo}+|\p{M}+|\p{Nd}+|\p{Nl}+|\p{No}+|\p{P}+|\p{S}+|\p{Zs}+|\p{Cc}+|\p{Cf}+|\p{Co}+|\d+|[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
    let tokenizer = split_shape(pattern);
    let fast = Encoder::from_tokenizer(tokenizer.clone(), Path::new("classes"))
        .unwrap()
        .with_engine(Engine::Fast)
        .unwrap();
    let chars: Vec<char> = (0..=0x10_FFFF).filter_map(char::from_u32).collect();
    let texts: Vec<String> = chars.chunks(4096).map(|c| c.iter().collect()).collect();
    assert_same_ids(&tokenizer, &fast, &texts, "all code points");
}

/// Patterns whose meaning Oniguruma and the `regex` crate do not share are refused (and
/// `auto` falls back to `tokenizers`); those they share split identically.
#[test]
fn split_patterns_are_taken_only_where_both_engines_agree() {
    let refused = [
        r"ab(?i)c|def|\S|\s",
        r"(?i:ss)|\S|\s",
        r"(?i:fi)|\S|\s",
        r"(?i)\p{Lu}|\S|\s",
        r"(?m).+|\s",
        r"(?x)[a ]+|\S|\s",
        r"[[:alpha:]]+|\S|\s",
        r"\pL+|\S|\s",
        r"\<x\>|\S|\s",
        r"\U00000041|\S|\s",
        r"ab{2}?c|\S|\s",
        r"[a~~b]|\S|\s",
        r"\w+|\S|\s",
        r"a++|\S|\s",
        r"(?=a)b|\S|\s",
    ];
    let texts: Vec<String> = FRAGMENTS
        .iter()
        .map(|f| f.to_string())
        .chain(["DEF def aß ẞ ﬆ ﬁ ﬀ U00000041 <x> ac abbc a~b naïve café\na\nb".to_owned()])
        .collect();
    for pattern in refused {
        let tokenizer = split_shape(pattern);
        let auto = Encoder::from_tokenizer(tokenizer.clone(), Path::new("p")).unwrap();
        assert_eq!(auto.engine(), "hf", "{pattern} should be refused");
        assert!(
            auto.fallback_reason().unwrap().contains("split pattern"),
            "{pattern}"
        );
    }
    for pattern in [
        LLAMA3_PATTERN,
        QWEN2_PATTERN,
        O200K_PATTERN,
        r"[$^.]+|\S+|\s+",
        r"\\b|[\x41-\x5a]+|\x{e9}+|[^\s]+|\s+",
        r"(?:ab){2}|a{2,}|\d{1,3}|\S|\s",
    ] {
        let tokenizer = split_shape(pattern);
        let fast = Encoder::from_tokenizer(tokenizer.clone(), Path::new("p"))
            .unwrap()
            .with_engine(Engine::Fast)
            .unwrap_or_else(|e| panic!("{pattern}: {e}"));
        assert_same_ids(&tokenizer, &fast, &texts, pattern);
    }
}

#[test]
fn added_vocabularies_and_vocabularies_it_cannot_read_exactly() {
    // Added tokens with single_word, lstrip or rstrip, and special tokens encoded as text.
    for edit in [
        |t: &mut Tokenizer| {
            t.add_tokens(&[AddedToken::from("fox", false).single_word(true)]);
        },
        |t: &mut Tokenizer| {
            t.add_special_tokens(&[AddedToken::from("<m>", true).lstrip(true)]);
        },
        |t: &mut Tokenizer| {
            t.add_special_tokens(&[AddedToken::from("<m>", true).rstrip(true)]);
        },
        |t: &mut Tokenizer| t.set_encode_special_tokens(true),
    ] {
        let mut tokenizer = tokenizer_of(gpt2());
        edit(&mut tokenizer);
        let auto = Encoder::from_tokenizer(tokenizer, Path::new("t")).unwrap();
        assert_eq!(auto.engine(), "hf");
    }
    // Split behaviours other than Isolated, an inverted Split, a Split after ByteLevel.
    for pre in [
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": r"\s+"}, "behavior": "Removed", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}),
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": r"\s+"}, "behavior": "Isolated", "invert": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}),
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
            {"type": "Split", "pattern": {"Regex": r"\s+"}, "behavior": "Isolated", "invert": false}]}),
    ] {
        let mut json = gpt2().clone();
        json["pre_tokenizer"] = pre;
        let auto = Encoder::from_tokenizer(tokenizer_of(&json), Path::new("t")).unwrap();
        assert_eq!(auto.engine(), "hf", "{}", json["pre_tokenizer"]);
    }
    // Two tokens sharing one id in a file: serialized again, one of them would be missing.
    let mut json = gpt2().clone();
    let shared = json["model"]["vocab"]["the"].clone();
    json["model"]["vocab"]["zzqq"] = shared;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shared.json");
    std::fs::write(&file, json.to_string()).unwrap();
    let auto = Encoder::from_file(&file).unwrap();
    assert!(
        auto.fallback_reason().unwrap().contains("ids shared"),
        "{:?}",
        auto.fallback_reason()
    );
    let mut ids = Vec::new();
    auto.encode("zzqq the", &mut ids).unwrap();
    assert_eq!(
        ids,
        tokenizer_of(&json)
            .encode_fast("zzqq the", true)
            .unwrap()
            .get_ids()
    );

    // An added vocabulary changed in memory so that it matches otherwise than its file says:
    // both engines encode the tokenizer as its file would be read back, and agree.
    let mut tokenizer = tokenizer_of(gpt2());
    tokenizer.add_special_tokens(&[AddedToken::from("ab", true).normalized(false)]);
    tokenizer.add_tokens(&[AddedToken::from("ab", false).normalized(true)]);
    tokenizer.add_tokens(&[AddedToken::from("b", false).normalized(false)]);
    let fast = Encoder::from_tokenizer(tokenizer.clone(), Path::new("t"))
        .unwrap()
        .with_engine(Engine::Fast)
        .unwrap();
    let hf = Encoder::from_tokenizer(tokenizer, Path::new("t"))
        .unwrap()
        .with_engine(Engine::Hf)
        .unwrap();
    for text in ["ab", "xaby", "abab b"] {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        fast.encode(text, &mut a).unwrap();
        hf.encode(text, &mut b).unwrap();
        assert_eq!(a, b, "{text}");
    }
}
