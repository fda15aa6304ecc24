//! A fast, exact encoder for byte-level BPE tokenizers, built from the same `tokenizer.json`.
//!
//! Hugging Face `tokenizers` spends most of an encode on bookkeeping a data pipeline never
//! reads: normalized strings with alignments, offsets, one `String` per token. This engine
//! computes the same ids from the same file with none of it:
//!
//! 1. added tokens are split off as `tokenizers`' `AddedVocabulary` does (leftmost-longest,
//!    first the tokens matched on the raw text, then the "normalized" ones);
//! 2. each remaining piece is pre-tokenized by the same regexes: the `Split` pre-tokenizers'
//!    (`Isolated`, as Llama 3's and Qwen's files have) and then `ByteLevel`'s GPT-2 pattern
//!    (`use_regex`), with its `add_prefix_space`. The patterns run on the `regex` crate, which
//!    lacks look-ahead: the one every byte-level pattern ends with, `\s+(?!\S)|\s+`, is
//!    matched as `\s+` and its effect (a run of spaces before a word leaves its last space to
//!    the word) is restored exactly, see [`Splitter`];
//! 3. each pre-token is merged by `tokenizers`' own algorithm (lowest merge rank first,
//!    leftmost among equals, stale queue entries checked by the merged id, bit for bit what
//!    `Word::merge_all` does) on its bytes, which is what byte-level BPE is: `ByteLevel` maps
//!    each byte to one character, one vocabulary entry per byte. Words already seen come from
//!    a per-session cache;
//! 4. the post-processor's special tokens are put around the ids (what it adds to one
//!    sequence is learnt from the tokenizer itself).
//!
//! [`FastBpe::new`] accepts only what it reproduces exactly and says what else it met: a
//! normalizer, another model, BPE dropout, subword prefixes or suffixes, a vocabulary missing a
//! byte, added tokens with `single_word`/`lstrip`/`rstrip`, `encode_special_tokens`, patterns
//! with constructs whose meaning could differ between Oniguruma and `regex`, other
//! pre-tokenizers or post-processors. Those tokenizers encode through `tokenizers`.
//! `tests/fast_bpe.rs` checks the ids against `tokenizers` on random and adversarial text.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex_automata::{Anchored, Input, meta};
use rustc_hash::FxHashMap;
use serde_json::Value;

/// Words longer than this (in bytes) are merged each time instead of cached.
const MAX_CACHED_WORD: usize = 256;
/// A session's cache is emptied when it holds this many ids (about 8 MiB with the keys).
const CACHE_IDS: usize = 1 << 20;

/// GPT-2's byte-to-character table (`bytes_to_unicode`), which `ByteLevel` maps bytes with.
fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[b as usize] = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(next).expect("256..324 are characters");
            next += 1;
            c
        };
    }
    table
}

/// The pattern `ByteLevel` splits with when `use_regex` is on.
pub(crate) const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// The look-ahead tail of byte-level patterns, which `regex` cannot run as written.
const LOOKAHEAD_TAIL: &str = r"|\s+(?!\S)|\s+";

/// A split pattern (`Split` with `Isolated`, or `ByteLevel`'s), on `regex-automata`.
///
/// A pattern ending in `\s+(?!\S)|\s+` runs as `HEAD|\s+`. Where the `\s+` alternative matched
/// a run of whitespace followed by a non-space, the look-ahead would have given the run back
/// one character (it cannot end before a non-space; a single character falls to the plain
/// `\s+`). The `\s+` alternative matched exactly when `HEAD` does not match at the same start
/// (leftmost-first: an earlier alternative has priority), which `head` tells.
///
/// Each search is first anchored where the last piece ended (byte-level patterns match at
/// every character, and an anchored search needs no reverse scan for the start); only where
/// that fails does an unanchored one look further. Both give the leftmost-first match. The
/// caches are the session's ([`SplitCache`]), so threads never share one.
#[derive(Debug)]
struct Splitter {
    all: meta::Regex,
    head: Option<meta::Regex>,
}

/// One session's search caches for one [`Splitter`].
#[derive(Debug)]
struct SplitCache {
    all: meta::Cache,
    head: Option<meta::Cache>,
}

impl Splitter {
    fn new(pattern: &str) -> Result<Self, String> {
        let (body, head) = match pattern.strip_suffix(LOOKAHEAD_TAIL) {
            Some(head) => (format!(r"{head}|\s+"), Some(head)),
            None => (pattern.to_owned(), None),
        };
        if let Some(construct) = unsupported_construct(&body) {
            return Err(format!("the split pattern {pattern:?} uses {construct}"));
        }
        let compile = |p: &str| {
            meta::Regex::new(p).map_err(|e| format!("the split pattern {pattern:?}: {e}"))
        };
        let all = compile(&body)?;
        if all.is_match("") {
            return Err(format!(
                "the split pattern {pattern:?} matches the empty string"
            ));
        }
        let head = head.map(compile).transpose()?;
        Ok(Splitter { all, head })
    }

    fn cache(&self) -> SplitCache {
        SplitCache {
            all: self.all.create_cache(),
            head: self.head.as_ref().map(meta::Regex::create_cache),
        }
    }

    /// Calls `f` with the pieces of `text`, in order: each match and each gap between
    /// matches (`Isolated`), none empty.
    fn split<'t>(&self, cache: &mut SplitCache, text: &'t str, f: &mut dyn FnMut(&'t str)) {
        let mut emitted = 0;
        while emitted < text.len() {
            let here = Input::new(text).range(emitted..);
            let found = self
                .all
                .search_with(&mut cache.all, &here.clone().anchored(Anchored::Yes))
                .or_else(|| self.all.search_with(&mut cache.all, &here));
            let Some(m) = found else { break };
            let (start, mut end) = (m.start(), m.end());
            if self.gives_back_last_space(cache, text, start, end) {
                end -= text[start..end]
                    .chars()
                    .next_back()
                    .map_or(0, char::len_utf8);
            }
            if start > emitted {
                f(&text[emitted..start]);
            }
            f(&text[start..end]);
            emitted = end;
        }
        if emitted < text.len() {
            f(&text[emitted..]);
        }
    }

    /// Whether the match `start..end` is the look-ahead tail's run of more than one
    /// whitespace character before a non-space (so it ends one character earlier).
    fn gives_back_last_space(
        &self,
        cache: &mut SplitCache,
        text: &str,
        start: usize,
        end: usize,
    ) -> bool {
        let (Some(head), Some(head_cache)) = (&self.head, &mut cache.head) else {
            return false;
        };
        let run = &text[start..end];
        let mut chars = run.chars();
        let (Some(_), Some(_)) = (chars.next(), chars.next()) else {
            return false;
        };
        let before_non_space = text[end..]
            .chars()
            .next()
            .is_some_and(|c| !c.is_whitespace());
        before_non_space
            && run.chars().all(char::is_whitespace)
            && head
                .search_half_with(
                    head_cache,
                    &Input::new(text).range(start..).anchored(Anchored::Yes),
                )
                .is_none()
    }
}

/// Why `pattern` might not split as Oniguruma splits it, if it might: the pattern is parsed
/// and every node must be in the subset whose meaning the two engines share (the review of
/// this engine found each construct refused here read differently by one of them):
///
/// - literals written plainly, as `\xHH`/`\x{..}`, `\t \n \r \f \v`, or escaped punctuation;
/// - `\s`, `\S`, `\d`, `\D`, `.`, general categories written with braces (`\p{L}`, `\P{N}`);
/// - bracketed classes of those (no POSIX `[:alpha:]` items, no nested classes, no `&&`,
///   `--`, `~~`);
/// - groups, `(?:..)`, alternation, repetition (but not `{n}?`, optional in Oniguruma, nor a
///   repeated repetition, possessive there);
/// - `(?i:..)` around ASCII literals only, without the pairs `ss st ff fi fl` (Oniguruma
///   folds them to one character such as `ß`).
///
/// Refused: anchors and assertions, flags set mid-group (`(?i)`, which Oniguruma scopes to
/// the rest of the group only), other flags, named groups, `\pL` without braces (the letters
/// `pL` to Oniguruma), `\w`, `\u`/`\U` escapes, classes under `(?i)`, and whatever
/// `regex-syntax` cannot parse (look-around, back-references, possessive quantifiers).
fn unsupported_construct(pattern: &str) -> Option<String> {
    use regex_syntax::ast::parse::Parser;
    match Parser::new().parse(pattern) {
        Ok(ast) => check_ast(&ast, false).err(),
        Err(e) => Some(format!(
            "syntax the regex engine does not share ({})",
            e.kind()
        )),
    }
}

/// The general categories `\p{..}` may name.
const CATEGORIES: [&str; 38] = [
    "L", "Lu", "Ll", "Lt", "Lm", "Lo", "M", "Mn", "Mc", "Me", "N", "Nd", "Nl", "No", "P", "Pc",
    "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "S", "Sm", "Sc", "Sk", "So", "Z", "Zs", "Zl", "Zp", "C",
    "Cc", "Cf", "Cs", "Co", "Cn", "LC",
];

fn check_ast(ast: &regex_syntax::ast::Ast, folded: bool) -> Result<(), String> {
    use regex_syntax::ast::{
        Ast, ClassPerlKind, Flag, FlagsItemKind, GroupKind, RepetitionKind, RepetitionRange,
    };
    match ast {
        Ast::Empty(_) => Ok(()),
        Ast::Literal(lit) => check_literal(lit, folded),
        Ast::Dot(_) | Ast::ClassPerl(_) | Ast::ClassUnicode(_) | Ast::ClassBracketed(_)
            if folded =>
        {
            Err("a class inside (?i:..), which Oniguruma folds differently".into())
        }
        Ast::Dot(_) => Ok(()),
        Ast::ClassPerl(c) => match c.kind {
            ClassPerlKind::Digit | ClassPerlKind::Space => Ok(()),
            ClassPerlKind::Word => Err("\\w (a different class in Oniguruma)".into()),
        },
        Ast::ClassUnicode(c) => check_unicode_class(c),
        Ast::ClassBracketed(c) => check_set(&c.kind),
        Ast::Repetition(r) => {
            if matches!(
                r.op.kind,
                RepetitionKind::Range(RepetitionRange::Exactly(_))
            ) && !r.greedy
            {
                return Err("`{n}?` (optional in Oniguruma)".into());
            }
            if matches!(*r.ast, Ast::Repetition(_)) {
                return Err("a repeated repetition (`a++` is possessive in Oniguruma)".into());
            }
            check_ast(&r.ast, folded)
        }
        Ast::Group(g) => match &g.kind {
            GroupKind::CaptureIndex(_) => check_ast(&g.ast, folded),
            GroupKind::CaptureName { .. } => Err("a named group".into()),
            GroupKind::NonCapturing(flags) => match flags.items.as_slice() {
                [] => check_ast(&g.ast, folded),
                [item] if item.kind == FlagsItemKind::Flag(Flag::CaseInsensitive) => {
                    check_ast(&g.ast, true)
                }
                _ => Err("group flags other than (?i:..)".into()),
            },
        },
        Ast::Alternation(a) => a.asts.iter().try_for_each(|x| check_ast(x, folded)),
        Ast::Concat(c) => {
            if folded {
                let text: String = c
                    .asts
                    .iter()
                    .map(|x| match x {
                        Ast::Literal(l) => l.c.to_ascii_lowercase(),
                        _ => '\0',
                    })
                    .collect();
                if let Some(pair) = ["ss", "st", "ff", "fi", "fl"]
                    .iter()
                    .find(|p| text.contains(*p))
                {
                    return Err(format!(
                        "\"{pair}\" inside (?i:..), one character to Oniguruma"
                    ));
                }
            }
            c.asts.iter().try_for_each(|x| check_ast(x, folded))
        }
        Ast::Flags(_) => Err("flags set mid-group (Oniguruma scopes them differently)".into()),
        Ast::Assertion(_) => Err("an anchor or word boundary".into()),
    }
}

fn check_literal(lit: &regex_syntax::ast::Literal, folded: bool) -> Result<(), String> {
    use regex_syntax::ast::{HexLiteralKind, LiteralKind, SpecialLiteralKind as S};
    let plain = match &lit.kind {
        LiteralKind::Verbatim | LiteralKind::Meta => true,
        LiteralKind::Superfluous => lit.c.is_ascii_punctuation(),
        LiteralKind::HexFixed(HexLiteralKind::X) | LiteralKind::HexBrace(HexLiteralKind::X) => true,
        LiteralKind::Special(k) => matches!(
            k,
            S::Tab | S::LineFeed | S::CarriageReturn | S::FormFeed | S::VerticalTab
        ),
        _ => false,
    };
    if !plain {
        return Err(format!(
            "the escape for {:?}, read differently by Oniguruma",
            lit.c
        ));
    }
    if folded && !lit.c.is_ascii() {
        return Err(format!(
            "{:?} inside (?i:..), folded differently by Oniguruma",
            lit.c
        ));
    }
    Ok(())
}

fn check_unicode_class(c: &regex_syntax::ast::ClassUnicode) -> Result<(), String> {
    use regex_syntax::ast::ClassUnicodeKind;
    match &c.kind {
        ClassUnicodeKind::Named(name) if CATEGORIES.contains(&name.as_str()) => Ok(()),
        ClassUnicodeKind::OneLetter(l) => Err(format!(
            "\\p{l} without braces (the letters p{l} to Oniguruma)"
        )),
        _ => Err("a Unicode class other than a general category".into()),
    }
}

fn check_set(set: &regex_syntax::ast::ClassSet) -> Result<(), String> {
    use regex_syntax::ast::{ClassPerlKind, ClassSet, ClassSetItem};
    let ClassSet::Item(item) = set else {
        return Err("a class set operation (&&, --, ~~)".into());
    };
    let items = match item {
        ClassSetItem::Union(u) => u.items.as_slice(),
        one => std::slice::from_ref(one),
    };
    for item in items {
        match item {
            ClassSetItem::Empty(_) => {}
            ClassSetItem::Literal(l) => check_literal(l, false)?,
            ClassSetItem::Range(r) => {
                check_literal(&r.start, false)?;
                check_literal(&r.end, false)?;
            }
            ClassSetItem::Unicode(c) => check_unicode_class(c)?,
            ClassSetItem::Perl(p) if p.kind != ClassPerlKind::Word => {}
            ClassSetItem::Perl(_) => return Err("\\w (a different class in Oniguruma)".into()),
            ClassSetItem::Ascii(_) => return Err("a POSIX class (ASCII-only to regex)".into()),
            ClassSetItem::Bracketed(_) | ClassSetItem::Union(_) => {
                return Err("a nested class".into());
            }
        }
    }
    Ok(())
}

/// Added tokens matched on the text (one trie of `tokenizers`' `AddedVocabulary`).
#[derive(Debug)]
struct AddedTrie {
    trie: AhoCorasick,
    ids: Vec<u32>,
}

impl AddedTrie {
    fn new(tokens: Vec<(String, u32)>) -> Result<Option<Self>, String> {
        if tokens.is_empty() {
            return Ok(None);
        }
        let (contents, ids): (Vec<String>, Vec<u32>) = tokens.into_iter().unzip();
        let trie = AhoCorasickBuilder::new()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&contents)
            .map_err(|e| format!("the added tokens: {e}"))?;
        Ok(Some(AddedTrie { trie, ids }))
    }
}

/// A piece of text after the added tokens are split off.
enum Piece<'t> {
    Added(u32),
    Text(&'t str),
}

/// A byte-level BPE tokenizer compiled for speed; see the module docs.
#[derive(Debug)]
pub(crate) struct FastBpe {
    /// Added tokens matched on the raw text, then those matched on "normalized" text.
    added: [Option<AddedTrie>; 2],
    /// The `Split` pre-tokenizers' patterns, then `ByteLevel`'s when it uses its regex.
    splitters: Vec<Splitter>,
    /// How many of `splitters` run before `ByteLevel` (which adds a prefix space).
    byte_level_at: usize,
    add_prefix_space: bool,
    /// The id of each byte's token.
    byte_ids: [u32; 256],
    /// Whole words looked up before merging (`ignore_merges`), keyed by their bytes.
    words: Option<FxHashMap<Box<[u8]>, u32>>,
    /// (left id, right id) to (rank, merged id).
    merges: FxHashMap<(u32, u32), (u32, u32)>,
    /// What the post-processor puts before and after one sequence.
    before: Vec<u32>,
    after: Vec<u32>,
}

impl FastBpe {
    /// Compiles `tokenizer`, or says why this engine cannot reproduce it exactly.
    pub(crate) fn new(tokenizer: &tokenizers::Tokenizer) -> Result<Self, String> {
        let json: Value = serde_json::from_str(
            &tokenizer
                .to_string(false)
                .map_err(|e| format!("cannot serialize the tokenizer: {e}"))?,
        )
        .map_err(|e| format!("cannot read the serialized tokenizer: {e}"))?;
        check_normalizer(&json["normalizer"])?;
        let (splitters, byte_level_at, add_prefix_space) = pre_tokenizer(&json["pre_tokenizer"])?;
        let (byte_ids, words, merges) = model(&json["model"])?;
        // A vocabulary giving one id to two tokens serializes one of them: the model's own
        // lookups would then differ from the file's.
        let listed = json["model"]["vocab"].as_object().map_or(0, |v| v.len());
        let held = tokenizers::Model::get_vocab_size(tokenizer.get_model());
        if listed != held {
            return Err(format!(
                "its vocabulary gives {} tokens but lists {listed} (ids shared by tokens)",
                held
            ));
        }
        let added = added_tokens(tokenizer)?;
        let (before, after) = wrap(tokenizer, &json["post_processor"])?;
        Ok(FastBpe {
            added,
            splitters,
            byte_level_at,
            add_prefix_space,
            byte_ids,
            words,
            merges,
            before,
            after,
        })
    }

    /// A session: the cache and scratch space of one encoding thread.
    pub(crate) fn session(&self) -> FastSession<'_> {
        FastSession {
            bpe: self,
            split_caches: self.splitters.iter().map(|s| Some(s.cache())).collect(),
            cache: FxHashMap::default(),
            cached_ids: Vec::new(),
            symbols: Vec::new(),
            queue: BinaryHeap::new(),
            spaced: String::new(),
        }
    }

    /// Calls `f` with the added-token and text pieces of `text`, in order.
    fn split_added<'t>(&self, text: &'t str, f: &mut dyn FnMut(Piece<'t>)) {
        self.split_added_with(0, text, f);
    }

    fn split_added_with<'t>(&self, level: usize, text: &'t str, f: &mut dyn FnMut(Piece<'t>)) {
        if text.is_empty() {
            return;
        }
        let Some(trie) = self.added.get(level) else {
            f(Piece::Text(text));
            return;
        };
        let Some(trie) = trie else {
            self.split_added_with(level + 1, text, f);
            return;
        };
        let mut emitted = 0;
        for m in trie.trie.find_iter(text) {
            if m.start() > emitted {
                self.split_added_with(level + 1, &text[emitted..m.start()], f);
            }
            f(Piece::Added(trie.ids[m.pattern().as_usize()]));
            emitted = m.end();
        }
        if emitted < text.len() {
            self.split_added_with(level + 1, &text[emitted..], f);
        }
    }
}

/// A normalizer changes the text before splitting: only none is reproduced.
fn check_normalizer(normalizer: &Value) -> Result<(), String> {
    match normalizer {
        Value::Null => Ok(()),
        n if n["type"] == "Sequence"
            && n["normalizers"].as_array().is_some_and(|a| a.is_empty()) =>
        {
            Ok(())
        }
        n => Err(format!("it has a normalizer ({})", type_of(n))),
    }
}

fn type_of(v: &Value) -> String {
    v["type"].as_str().unwrap_or("of unknown type").to_owned()
}

/// `ByteLevel`, alone or after `Split`s: the splitters, where `ByteLevel` sits among them,
/// and whether it adds a prefix space.
fn pre_tokenizer(pt: &Value) -> Result<(Vec<Splitter>, usize, bool), String> {
    let steps: Vec<&Value> = match pt["type"].as_str() {
        Some("Sequence") => pt["pretokenizers"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default(),
        Some(_) => vec![pt],
        None => return Err("it has no pre-tokenizer (byte-level BPE has ByteLevel)".into()),
    };
    let Some((last, splits)) = steps.split_last() else {
        return Err("its pre-tokenizer is an empty sequence".into());
    };
    if last["type"] != "ByteLevel" {
        return Err(format!(
            "its pre-tokenizer does not end with ByteLevel ({})",
            type_of(last)
        ));
    }
    let mut splitters = Vec::new();
    for split in splits {
        if split["type"] != "Split" {
            return Err(format!(
                "its pre-tokenizer has {} before ByteLevel",
                type_of(split)
            ));
        }
        if split["behavior"] != "Isolated" || split["invert"] != false {
            return Err(format!(
                "its Split pre-tokenizer is {} with invert {} (only Isolated, not inverted, is \
                 reproduced)",
                split["behavior"], split["invert"]
            ));
        }
        let pattern = match (&split["pattern"]["Regex"], &split["pattern"]["String"]) {
            (Value::String(re), _) => re.clone(),
            (_, Value::String(s)) => regex_syntax::escape(s),
            _ => {
                return Err(format!(
                    "its Split pattern {} is not readable",
                    split["pattern"]
                ));
            }
        };
        splitters.push(Splitter::new(&pattern)?);
    }
    let byte_level_at = splitters.len();
    if last["use_regex"] != false {
        splitters.push(Splitter::new(GPT2_PATTERN)?);
    }
    Ok((splitters, byte_level_at, last["add_prefix_space"] == true))
}

type Model = (
    [u32; 256],
    Option<FxHashMap<Box<[u8]>, u32>>,
    FxHashMap<(u32, u32), (u32, u32)>,
);

/// A BPE model over the 256 byte characters: byte ids, whole words (`ignore_merges`), merges.
fn model(model: &Value) -> Result<Model, String> {
    if model["type"] != "BPE" {
        return Err(format!("its model is {}, not BPE", type_of(model)));
    }
    if model["dropout"].as_f64().is_some_and(|d| d > 0.0) {
        return Err("its BPE has dropout".into());
    }
    for affix in ["continuing_subword_prefix", "end_of_word_suffix"] {
        if model[affix].as_str().is_some_and(|s| !s.is_empty()) {
            return Err(format!("its BPE has a {affix}"));
        }
    }
    let vocab = model["vocab"]
        .as_object()
        .ok_or("its BPE has no vocabulary")?;
    let chars = byte_chars();
    let mut byte_of = FxHashMap::default();
    for (b, &c) in chars.iter().enumerate() {
        byte_of.insert(c, b as u8);
    }
    let id_of = |token: &str| vocab.get(token).and_then(Value::as_u64).map(|id| id as u32);
    let mut byte_ids = [0u32; 256];
    for (b, &c) in chars.iter().enumerate() {
        byte_ids[b] = id_of(c.encode_utf8(&mut [0; 4]))
            .ok_or_else(|| format!("its vocabulary lacks the token of byte {b:#04x} ({c:?})"))?;
    }
    let words = (model["ignore_merges"] == true).then(|| {
        vocab
            .iter()
            .filter_map(|(token, id)| {
                let bytes: Option<Vec<u8>> =
                    token.chars().map(|c| byte_of.get(&c).copied()).collect();
                Some((bytes?.into_boxed_slice(), id.as_u64()? as u32))
            })
            .collect()
    });
    let list = model["merges"].as_array().ok_or("its BPE has no merges")?;
    let mut merges = FxHashMap::default();
    merges.reserve(list.len());
    for (rank, merge) in list.iter().enumerate() {
        // `tokenizers` writes merges as pairs; the older "a b" strings are ambiguous when a
        // token holds a space.
        let (a, b) = match merge {
            Value::Array(pair) => match (
                pair.first().and_then(Value::as_str),
                pair.get(1).and_then(Value::as_str),
            ) {
                (Some(a), Some(b)) => (a, b),
                _ => return Err(format!("merge {merge} is not a pair")),
            },
            other => return Err(format!("merge {other} is not a pair")),
        };
        let missing = |t: &str| format!("merge ({a:?}, {b:?}): {t:?} is not in the vocabulary");
        let left = id_of(a).ok_or_else(|| missing(a))?;
        let right = id_of(b).ok_or_else(|| missing(b))?;
        let merged = format!("{a}{b}");
        let new_id = id_of(&merged).ok_or_else(|| missing(&merged))?;
        merges.insert((left, right), (rank as u32, new_id));
    }
    Ok((byte_ids, words, merges))
}

/// The added-token tries, as `AddedVocabulary` builds them (the raw-text one first).
fn added_tokens(tokenizer: &tokenizers::Tokenizer) -> Result<[Option<AddedTrie>; 2], String> {
    if tokenizer.get_encode_special_tokens() {
        return Err("it encodes special tokens as text (encode_special_tokens)".into());
    }
    let mut raw = Vec::new();
    let mut normalized = Vec::new();
    let mut tokens: Vec<_> = tokenizer.get_added_tokens_decoder().into_iter().collect();
    // `AddedVocabulary` keeps them in the order they were added, which is id order in a file.
    tokens.sort_by_key(|(id, _)| *id);
    for (id, token) in tokens {
        if token.single_word || token.lstrip || token.rstrip {
            return Err(format!(
                "its added token {:?} has single_word, lstrip or rstrip",
                token.content
            ));
        }
        if token.content.is_empty() {
            continue;
        }
        if token.normalized {
            normalized.push((token.content, id));
        } else {
            raw.push((token.content, id));
        }
    }
    Ok([AddedTrie::new(raw)?, AddedTrie::new(normalized)?])
}

/// What the post-processor puts around one sequence, learnt by running it on a marker.
fn wrap(tokenizer: &tokenizers::Tokenizer, pp: &Value) -> Result<(Vec<u32>, Vec<u32>), String> {
    const WRAPPERS: [&str; 4] = [
        "ByteLevel",
        "TemplateProcessing",
        "RobertaProcessing",
        "BertProcessing",
    ];
    let reproduced =
        |p: &Value| p.is_null() || p["type"].as_str().is_some_and(|t| WRAPPERS.contains(&t));
    let ok = reproduced(pp)
        || (pp["type"] == "Sequence"
            && pp["processors"]
                .as_array()
                .is_some_and(|a| a.iter().all(reproduced)));
    if !ok {
        return Err(format!("its post-processor is {}", type_of(pp)));
    }
    const MARK: u32 = u32::MAX;
    let marker = tokenizers::Encoding::from_tokens(
        vec![tokenizers::Token::new(MARK, "a".into(), (0, 1))],
        0,
    );
    let ids = tokenizer
        .post_process(marker, None, true)
        .map_err(|e| format!("its post-processor fails on one token: {e}"))?
        .get_ids()
        .to_vec();
    match ids.iter().position(|&id| id == MARK) {
        Some(at) if ids.iter().filter(|&&id| id == MARK).count() == 1 => {
            Ok((ids[..at].to_vec(), ids[at + 1..].to_vec()))
        }
        _ => Err("its post-processor does not keep a sequence whole".into()),
    }
}

/// A merge candidate in the queue: lowest rank first, then leftmost (`Word::merge_all`'s).
#[derive(Debug, Clone, Copy)]
struct Merge {
    pos: usize,
    rank: u32,
    new_id: u32,
}

impl PartialEq for Merge {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Merge {}
impl PartialOrd for Merge {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Merge {
    fn cmp(&self, other: &Self) -> Ordering {
        other.rank.cmp(&self.rank).then(other.pos.cmp(&self.pos))
    }
}

/// One symbol of a word being merged: its id and its neighbours (`None` at the ends); `alive`
/// is false once merged into its left neighbour.
#[derive(Debug, Clone, Copy)]
struct Symbol {
    id: u32,
    prev: Option<usize>,
    next: Option<usize>,
    alive: bool,
}

/// One thread's encoding state: a word cache and scratch space.
pub(crate) struct FastSession<'a> {
    bpe: &'a FastBpe,
    /// One per splitter, taken out while it splits.
    split_caches: Vec<Option<SplitCache>>,
    /// A word's bytes to the range of its ids in `cached_ids`.
    cache: FxHashMap<Box<[u8]>, (u32, u32)>,
    cached_ids: Vec<u32>,
    symbols: Vec<Symbol>,
    queue: BinaryHeap<Merge>,
    spaced: String,
}

impl FastSession<'_> {
    /// Appends the ids of `text` to `out`: what `tokenizers`' `encode(text, true)` gives.
    pub(crate) fn encode(&mut self, text: &str, out: &mut Vec<u32>) {
        let bpe = self.bpe;
        out.extend_from_slice(&bpe.before);
        bpe.split_added(text, &mut |piece| match piece {
            Piece::Added(id) => out.push(id),
            Piece::Text(t) => self.pre_tokenize(0, t, out),
        });
        out.extend_from_slice(&bpe.after);
    }

    fn pre_tokenize(&mut self, stage: usize, text: &str, out: &mut Vec<u32>) {
        let bpe = self.bpe;
        if stage == bpe.byte_level_at && bpe.add_prefix_space && !text.starts_with(' ') {
            let mut spaced = std::mem::take(&mut self.spaced);
            spaced.clear();
            spaced.push(' ');
            spaced.push_str(text);
            self.split_from(stage, &spaced, out);
            self.spaced = spaced;
        } else {
            self.split_from(stage, text, out);
        }
    }

    fn split_from(&mut self, stage: usize, text: &str, out: &mut Vec<u32>) {
        let bpe = self.bpe;
        match bpe.splitters.get(stage) {
            None => self.word(text.as_bytes(), out),
            Some(splitter) => {
                let mut cache = self.split_caches[stage]
                    .take()
                    .expect("a splitter's cache is back once it has split");
                splitter.split(&mut cache, text, &mut |piece| {
                    self.pre_tokenize(stage + 1, piece, out)
                });
                self.split_caches[stage] = Some(cache);
            }
        }
    }

    /// The ids of one pre-token.
    fn word(&mut self, word: &[u8], out: &mut Vec<u32>) {
        let bpe = self.bpe;
        if let Some(words) = &bpe.words
            && let Some(&id) = words.get(word)
        {
            out.push(id);
            return;
        }
        if let [b] = word {
            out.push(bpe.byte_ids[*b as usize]);
            return;
        }
        if let Some(&(start, len)) = self.cache.get(word) {
            out.extend_from_slice(&self.cached_ids[start as usize..(start + len) as usize]);
            return;
        }
        let from = out.len();
        self.merge(word, out);
        if word.len() <= MAX_CACHED_WORD {
            if self.cached_ids.len() >= CACHE_IDS {
                self.cache.clear();
                self.cached_ids.clear();
            }
            let start = self.cached_ids.len() as u32;
            self.cached_ids.extend_from_slice(&out[from..]);
            self.cache
                .insert(word.into(), (start, (out.len() - from) as u32));
        }
    }

    /// `tokenizers`' `Word::merge_all` without dropout, on the word's bytes.
    fn merge(&mut self, word: &[u8], out: &mut Vec<u32>) {
        let bpe = self.bpe;
        let n = word.len();
        self.symbols.clear();
        self.symbols
            .extend(word.iter().enumerate().map(|(i, &b)| Symbol {
                id: bpe.byte_ids[b as usize],
                prev: i.checked_sub(1),
                next: (i + 1 < n).then_some(i + 1),
                alive: true,
            }));
        self.queue.clear();
        for pos in 0..n.saturating_sub(1) {
            let pair = (self.symbols[pos].id, self.symbols[pos + 1].id);
            if let Some(&(rank, new_id)) = bpe.merges.get(&pair) {
                self.queue.push(Merge { pos, rank, new_id });
            }
        }
        while let Some(top) = self.queue.pop() {
            let symbol = self.symbols[top.pos];
            let Some(next) = symbol.next else { continue };
            if !symbol.alive {
                continue;
            }
            let right = self.symbols[next];
            // A stale entry: the pair at `pos` has changed since it was queued.
            if bpe
                .merges
                .get(&(symbol.id, right.id))
                .is_none_or(|&(_, id)| id != top.new_id)
            {
                continue;
            }
            self.symbols[top.pos].id = top.new_id;
            self.symbols[top.pos].next = right.next;
            self.symbols[next].alive = false;
            if let Some(after) = right.next {
                self.symbols[after].prev = Some(top.pos);
            }
            let current = self.symbols[top.pos];
            if let Some(prev) = current.prev
                && let Some(&(rank, new_id)) = bpe.merges.get(&(self.symbols[prev].id, current.id))
            {
                self.queue.push(Merge {
                    pos: prev,
                    rank,
                    new_id,
                });
            }
            if let Some(after) = current.next
                && let Some(&(rank, new_id)) = bpe.merges.get(&(current.id, self.symbols[after].id))
            {
                self.queue.push(Merge {
                    pos: top.pos,
                    rank,
                    new_id,
                });
            }
        }
        out.extend(self.symbols.iter().filter(|s| s.alive).map(|s| s.id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_chars_is_gpt2s_table() {
        let t = byte_chars();
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[0], 'Ā');
        // 0xAD (soft hyphen) is the last unprintable byte: 256 + 67.
        assert_eq!(t[0xAD], '\u{143}');
        let distinct: std::collections::HashSet<char> = t.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
    }

    #[test]
    fn the_lookahead_tail_is_restored() {
        let s = Splitter::new(GPT2_PATTERN).unwrap();
        let mut cache = s.cache();
        let mut pieces = |text: &str| {
            let mut v = Vec::new();
            s.split(&mut cache, text, &mut |p| v.push(p.to_owned()));
            v
        };
        assert_eq!(pieces("a   b"), ["a", "  ", " b"]);
        assert_eq!(pieces("a \nb"), ["a", " ", "\n", "b"]);
        assert_eq!(pieces("a\n\nb"), ["a", "\n", "\n", "b"]);
        assert_eq!(pieces("end  "), ["end", "  "]);
        assert_eq!(pieces("x \tb"), ["x", " ", "\t", "b"]);
        assert_eq!(pieces("it's 42!"), ["it", "'s", " 42", "!"]);
    }

    #[test]
    fn patterns_it_cannot_run_exactly_are_refused() {
        for p in [
            r"\w+", r"(?=a)b", r"^a", r"a$", r"(a)\1", r"a++", r"a{1,3}+", r"\bx",
        ] {
            assert!(Splitter::new(p).is_err(), "{p}");
        }
        assert!(Splitter::new(r"a*").is_err());
        assert!(Splitter::new(r"[^\s]+|\s+").is_ok());
    }
}
