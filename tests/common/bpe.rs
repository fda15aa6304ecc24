//! A byte-level BPE trained here (GPT-2's settings: `ByteLevel` without a prefix space,
//! `<|endoftext|>` special), so that no tokenizer is downloaded. Used by the ingest tests and,
//! through `#[path]`, by `benches/ingest.rs`.

use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, NormalizerWrapper, Tokenizer, TokenizerBuilder};

/// The end-of-text token every trained tokenizer has.
pub const EOT: &str = "<|endoftext|>";

/// A byte-level BPE of `vocab` ids (merges seen at least `min_frequency` times) trained on
/// `texts`.
pub fn train_byte_level<S: AsRef<str> + Send>(
    texts: impl Iterator<Item = S> + Send,
    vocab: usize,
    min_frequency: u64,
) -> Tokenizer {
    let mut trainer = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(vocab)
        .min_frequency(min_frequency)
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
    tokenizer.train(&mut trainer, texts).unwrap();
    tokenizer.to_string(false).unwrap().parse().unwrap()
}
