//! The encoder: text to token ids, byte-level or through a Hugging Face `tokenizer.json`.
//!
//! A tokenizer encodes as Megatron-LM's `preprocess_data.py` does through its
//! `HuggingFaceTokenizer` (`include_special_tokens`, the default: `tokenizer(text).input_ids`):
//! the Python `tokenizers` `Tokenizer.encode(text).ids`, that is with `add_special_tokens = true`,
//! so the tokenizer's post-processor adds what its config says (a BOS for Llama-style
//! templates, nothing for GPT-2-style byte-level BPE), and special tokens written in the text
//! are matched as the added vocabulary says. Truncation and padding stored in the file are
//! turned off, as `transformers` does for a plain call: a document is never cut.
//!
//! Two engines give those ids ([`Engine`]): `tokenizers` itself, and for byte-level BPE
//! tokenizers (GPT-2, Llama 3, Qwen and most current ones) the [`fast_bpe`](super::fast_bpe)
//! engine compiled from the same file, several times faster and proven identical by
//! `tests/fast_bpe.rs`. [`Engine::Auto`] takes the fast one where it reproduces the tokenizer
//! exactly and says why not otherwise ([`Encoder::fallback_reason`]).

use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::fast_bpe::{FastBpe, FastSession};
use crate::Dtype;
use crate::error::{Error, Result};

/// Which engine encodes with a tokenizer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Engine {
    /// Hugging Face `tokenizers`.
    Hf,
    /// The fast byte-level BPE engine; an error for a tokenizer it does not reproduce.
    Fast,
    /// The fast engine where it reproduces the tokenizer exactly, else `tokenizers`.
    #[default]
    Auto,
}

impl FromStr for Engine {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "hf" => Ok(Engine::Hf),
            "fast" => Ok(Engine::Fast),
            "auto" => Ok(Engine::Auto),
            other => Err(Error::Config(format!(
                "engine {other:?}: expected hf, fast or auto"
            ))),
        }
    }
}

/// The byte-level end-of-document id (after ids 0-255, one per byte).
pub const BYTE_LEVEL_EOD: u32 = 256;

/// Vocabularies below this size are stored as u16, others as i32: Megatron-LM's
/// `DType.optimal_dtype` (`cardinality < 65500`), so that the `.bin` is the one it writes.
pub const U16_VOCAB_LIMIT: usize = 65_500;

/// Turns text into token ids.
#[derive(Debug)]
pub struct Encoder {
    kind: Kind,
    vocab_size: usize,
}

#[derive(Debug)]
enum Kind {
    /// One id per UTF-8 byte (0-255), 256 for the end of a document.
    ByteLevel,
    /// A Hugging Face tokenizer, and the file it came from (for messages).
    Tokenizer {
        tokenizer: Box<tokenizers::Tokenizer>,
        path: PathBuf,
        /// The fast engine, when it encodes.
        fast: Option<Box<FastBpe>>,
        /// Why the fast engine does not encode (`tokenizers` chosen, or the fast engine
        /// cannot reproduce this tokenizer).
        not_fast: Option<String>,
    },
}

impl Encoder {
    /// The byte-level encoder: each UTF-8 byte is its own id (0-255); 256 is the end of a
    /// document. Its vocabulary holds 257 ids.
    pub fn byte_level() -> Self {
        Encoder {
            kind: Kind::ByteLevel,
            vocab_size: BYTE_LEVEL_EOD as usize + 1,
        }
    }

    /// Loads a Hugging Face `tokenizer.json`, to encode with the fast engine where it
    /// reproduces the tokenizer ([`Engine::Auto`]; see [`Encoder::with_engine`]).
    ///
    /// # Errors
    ///
    /// [`Error::MissingFile`] or [`Error::Io`] when the file cannot be read;
    /// [`Error::Config`] naming the file and the parser's reason when it is not a tokenizer.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, "read", e))?;
        let tokenizer: tokenizers::Tokenizer = text.parse().map_err(|e| {
            Error::Config(format!(
                "tokenizer {}: not a Hugging Face tokenizer.json: {e}",
                path.display()
            ))
        })?;
        Self::wrap(tokenizer, path)
    }

    /// Wraps a tokenizer already in memory, as its `tokenizer.json` would be read back;
    /// `path` names it in messages.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when it cannot be serialized and read back, or its truncation cannot
    /// be turned off.
    pub fn from_tokenizer(tokenizer: tokenizers::Tokenizer, path: &Path) -> Result<Self> {
        // What the file would hold: an added vocabulary changed in memory can match other
        // tokens than its serialized form says, and both engines must see the same tokenizer.
        // (`encode_special_tokens` is not serialized: it is carried over.)
        let encode_special_tokens = tokenizer.get_encode_special_tokens();
        let mut tokenizer: tokenizers::Tokenizer = tokenizer
            .to_string(false)
            .and_then(|json| json.parse())
            .map_err(|e| {
                Error::Config(format!(
                    "tokenizer {}: cannot serialize and read it back: {e}",
                    path.display()
                ))
            })?;
        tokenizer.set_encode_special_tokens(encode_special_tokens);
        Self::wrap(tokenizer, path)
    }

    /// A tokenizer as the file holds it, truncation and padding off.
    fn wrap(mut tokenizer: tokenizers::Tokenizer, path: &Path) -> Result<Self> {
        tokenizer.with_truncation(None).map_err(|e| {
            Error::Config(format!(
                "tokenizer {}: cannot turn truncation off: {e}",
                path.display()
            ))
        })?;
        tokenizer.with_padding(None);
        let vocab_size = tokenizer.get_vocab_size(true);
        Encoder {
            kind: Kind::Tokenizer {
                tokenizer: Box::new(tokenizer),
                path: path.to_path_buf(),
                fast: None,
                not_fast: None,
            },
            vocab_size,
        }
        .with_engine(Engine::Auto)
    }

    /// Chooses the engine a tokenizer encodes with (the byte-level encoder has none).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the tokenizer and the reason for [`Engine::Fast`] with a
    /// tokenizer the fast engine does not reproduce exactly.
    pub fn with_engine(mut self, engine: Engine) -> Result<Self> {
        if let Kind::Tokenizer {
            tokenizer,
            path,
            fast,
            not_fast,
        } = &mut self.kind
        {
            let compiled = match engine {
                Engine::Hf => Err("the hf engine was asked for".to_owned()),
                Engine::Fast | Engine::Auto => FastBpe::new(tokenizer),
            };
            match compiled {
                Ok(bpe) => (*fast, *not_fast) = (Some(Box::new(bpe)), None),
                Err(reason) if engine == Engine::Fast => {
                    return Err(Error::Config(format!(
                        "tokenizer {}: the fast engine cannot reproduce it exactly: {reason} \
                         (use --engine hf or auto)",
                        path.display()
                    )));
                }
                Err(reason) => (*fast, *not_fast) = (None, Some(reason)),
            }
        }
        Ok(self)
    }

    /// The engine that encodes: `byte-level`, `hf` or `fast`.
    pub fn engine(&self) -> &'static str {
        match &self.kind {
            Kind::ByteLevel => "byte-level",
            Kind::Tokenizer { fast: Some(_), .. } => "fast",
            Kind::Tokenizer { fast: None, .. } => "hf",
        }
    }

    /// Why a tokenizer encodes through `tokenizers` rather than the fast engine.
    pub fn fallback_reason(&self) -> Option<&str> {
        match &self.kind {
            Kind::Tokenizer { not_fast, .. } => not_fast.as_deref(),
            Kind::ByteLevel => None,
        }
    }

    /// An encoding session: one per thread, it keeps the fast engine's word cache.
    pub fn session(&self) -> EncodeSession<'_> {
        let fast = match &self.kind {
            Kind::Tokenizer {
                fast: Some(bpe), ..
            } => Some(bpe.session()),
            _ => None,
        };
        EncodeSession {
            encoder: self,
            fast,
        }
    }

    /// How many ids the vocabulary holds, added tokens included (byte-level: 257).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// What encodes: `byte-level`, or `tokenizer PATH`.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::ByteLevel => "byte-level".into(),
            Kind::Tokenizer { path, .. } => format!("tokenizer {}", path.display()),
        }
    }

    /// The id `token_or_id` names: a decimal number is an id (below the vocabulary size);
    /// anything else is a token looked up in the vocabulary, added tokens included
    /// (`<|endoftext|>`).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the token when the vocabulary lacks it, or the id when it is
    /// out of range.
    pub fn id_of(&self, token_or_id: &str) -> Result<u32> {
        if !token_or_id.is_empty() && token_or_id.bytes().all(|b| b.is_ascii_digit()) {
            return match token_or_id.parse::<u32>() {
                Ok(id) if (id as usize) < self.vocab_size => Ok(id),
                _ => Err(Error::Config(format!(
                    "id {token_or_id} is outside the vocabulary of {} ({} ids: 0 to {})",
                    self.describe(),
                    self.vocab_size,
                    self.vocab_size - 1
                ))),
            };
        }
        match &self.kind {
            Kind::ByteLevel => Err(Error::Config(format!(
                "token {token_or_id:?}: the byte-level encoder has no named tokens; give an id \
                 (0-255 for a byte, {BYTE_LEVEL_EOD} for the end of a document)"
            ))),
            Kind::Tokenizer {
                tokenizer, path, ..
            } => tokenizer.token_to_id(token_or_id).ok_or_else(|| {
                Error::Config(format!(
                    "token {token_or_id:?} is not in the vocabulary of tokenizer {}",
                    path.display()
                ))
            }),
        }
    }

    /// Appends the ids of `text` to `out` (see the module docs for what a tokenizer adds).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the tokenizer and its reason when it cannot encode the text.
    /// For many texts, [`Encoder::session`] keeps a cache between them.
    pub fn encode(&self, text: &str, out: &mut Vec<u32>) -> Result<()> {
        self.session().encode(text, out)
    }

    /// The text of `ids`. Byte-level: the bytes as UTF-8 (invalid sequences replaced), the
    /// end-of-document id 256 shown as nothing. A tokenizer decodes with its decoder, special
    /// tokens kept (so document ends show as `<|endoftext|>`).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the first id outside the vocabulary, or the tokenizer's reason.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(Error::Config(format!(
                "id {id} is outside the vocabulary of {} ({} ids)",
                self.describe(),
                self.vocab_size
            )));
        }
        match &self.kind {
            Kind::ByteLevel => {
                let bytes: Vec<u8> = ids.iter().filter_map(|&id| u8::try_from(id).ok()).collect();
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
            Kind::Tokenizer {
                tokenizer, path, ..
            } => tokenizer.decode(ids, false).map_err(|e| {
                Error::Config(format!("tokenizer {}: cannot decode: {e}", path.display()))
            }),
        }
    }

    /// The dtype ids are stored as by default: u16 for a vocabulary under
    /// [`U16_VOCAB_LIMIT`] ids (byte-level included), else i32, as Megatron-LM chooses.
    pub fn default_dtype(&self) -> Dtype {
        if self.vocab_size < U16_VOCAB_LIMIT {
            Dtype::U16
        } else {
            Dtype::I32
        }
    }
}

/// One thread's encoder: [`Encoder::encode`] with the fast engine's word cache kept between
/// texts.
pub struct EncodeSession<'a> {
    encoder: &'a Encoder,
    fast: Option<FastSession<'a>>,
}

impl EncodeSession<'_> {
    /// Appends the ids of `text` to `out`, as [`Encoder::encode`].
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the tokenizer and its reason when it cannot encode the text.
    pub fn encode(&mut self, text: &str, out: &mut Vec<u32>) -> Result<()> {
        self.try_encode(text, out)
            .map_err(|reason| match &self.encoder.kind {
                Kind::ByteLevel => Error::Config(reason),
                Kind::Tokenizer { path, .. } => {
                    Error::Config(format!("tokenizer {}: {reason}", path.display()))
                }
            })
    }

    /// [`EncodeSession::encode`], its error as a bare reason (the pipeline names the document).
    pub(crate) fn try_encode(&mut self, text: &str, out: &mut Vec<u32>) -> Result<(), String> {
        if let Some(fast) = &mut self.fast {
            fast.encode(text, out);
            return Ok(());
        }
        match &self.encoder.kind {
            Kind::ByteLevel => {
                out.extend(text.bytes().map(u32::from));
                Ok(())
            }
            Kind::Tokenizer { tokenizer, .. } => {
                // `encode_fast` skips the offsets; the ids are `encode`'s.
                let encoding = tokenizer
                    .encode_fast(text, true)
                    .map_err(|e| format!("cannot encode: {e}"))?;
                out.extend_from_slice(encoding.get_ids());
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_round_trip() {
        let e = Encoder::byte_level();
        let mut ids = Vec::new();
        e.encode("hé", &mut ids).unwrap();
        assert_eq!(ids, [104, 195, 169]);
        ids.push(BYTE_LEVEL_EOD);
        assert_eq!(e.decode(&ids).unwrap(), "hé");
        assert_eq!(e.vocab_size(), 257);
        assert_eq!(e.default_dtype(), Dtype::U16);
        assert_eq!(e.id_of("256").unwrap(), 256);
        assert!(e.id_of("257").unwrap_err().to_string().contains("257"));
        assert!(e.id_of("<|endoftext|>").is_err());
        assert!(e.decode(&[300]).unwrap_err().to_string().contains("300"));
    }
}
