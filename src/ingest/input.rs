//! Input readers: the documents of JSON lines, plain text (gzip- or zstd-compressed too) and
//! Parquet files, in a stated order.
//!
//! [`expand`] turns the inputs a user names (files, directories, globs, `-` for stdin) into a
//! list of files sorted by path bytes, so the documents never depend on the file system's
//! listing order. [`Documents`] streams them one line, one paragraph or one batch of Parquet
//! rows at a time (memory holds one document and the reader's buffers, never a whole file).
//!
//! | format | a document is | `field` |
//! |---|---|---|
//! | JSON lines | the string at `field` of each line's object | a key, or a dotted path (`meta.text`) |
//! | text | a paragraph: lines up to a blank line, joined by `\n` | unused |
//! | Parquet | the string in column `field` of each row | a column, or a dotted path to a nested one |
//!
//! Bad records ([`BadKind`]) are an error naming the file and line (or row group and row),
//! or, with `skip_bad`, counted in [`Documents::skipped`] and skipped.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parquet::basic::{ConvertedType, LogicalType, Type as PhysicalType};
use parquet::column::reader::{ColumnReader, ColumnReaderImpl};
use parquet::data_type::{ByteArray, ByteArrayType};
use parquet::file::reader::{FileReader, SerializedFileReader};

use super::json_field::{self, Field, FieldPath};
use super::{BadKind, Document, Location};
use crate::{Error, Result};

/// The most bytes one document may hold: its ids and an end-of-document id form one sequence,
/// whose length is an i32 in the Megatron index. A longer document is an error (never skipped),
/// refused as soon as its text passes this, before it is held in memory whole.
pub const MAX_DOCUMENT_BYTES: usize = i32::MAX as usize - 1;

/// A JSON line may be this much longer than [`MAX_DOCUMENT_BYTES`] (its other fields, escapes);
/// a longer one is refused while it is read.
const MAX_JSON_LINE: usize = 2 * MAX_DOCUMENT_BYTES;

/// The UTF-8 byte order mark that some editors write at the start of a file.
const BOM: &[u8] = b"\xef\xbb\xbf";

/// Parquet rows decoded at a time (bounds the memory one batch of documents holds).
const PARQUET_BATCH: usize = 256;

/// How the input files are read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InputFormat {
    /// By extension, any case: `.jsonl`, `.json`, `.ndjson` are JSON lines, `.txt`, `.text`,
    /// `.md` text (each also with `.gz` or `.zst`), `.parquet` Parquet. Otherwise by content:
    /// Parquet's `PAR1` magic, else JSON lines when the first non-blank byte is `{`, else text.
    #[default]
    Auto,
    /// JSON lines: one object per line, the document in `field`.
    Jsonl,
    /// Plain text: a document per paragraph.
    Text,
    /// Parquet: the document in string column `field`.
    Parquet,
}

/// What [`Documents::open`] reads.
#[derive(Clone, Debug)]
pub struct InputConfig {
    /// Files, directories, globs, or `-` (stdin, alone), as [`expand`] takes them.
    pub inputs: Vec<PathBuf>,
    /// The JSON field or Parquet column holding the text; a dotted path reaches a nested one.
    pub field: String,
    /// The format of every input.
    pub format: InputFormat,
    /// Count and skip bad records instead of failing on the first one.
    pub skip_bad: bool,
}

/// The files named by `inputs`, in the order documents are read from them.
///
/// A file is taken as given; a directory gives its regular files, recursively (names starting
/// with `.` skipped, symbolic links to files followed, to directories not); a path with `*`,
/// `?` or `[..]` in a component (and no file of that exact name) is a glob, matched component
/// by component (a leading `.` only by a pattern that starts with one), each matching
/// directory expanded as above. The files of one directory or glob are sorted by their path's
/// bytes; the inputs stay in the order given; a file named twice is read once, where first
/// named. `-` stands for stdin and must be the only input.
///
/// # Errors
///
/// [`Error::MissingFile`] for a missing path; [`Error::InputFile`] for a glob matching no file,
/// a directory holding none, or `-` among other inputs; [`Error::Io`] when a directory cannot
/// be listed.
pub fn expand(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    if inputs.iter().any(|p| p.as_os_str() == "-") {
        if inputs.len() == 1 {
            return Ok(inputs.to_vec());
        }
        return Err(Error::InputFile {
            path: PathBuf::from("-"),
            row: None,
            reason: "stdin (`-`) must be the only input".into(),
        });
    }
    let mut files = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for input in inputs {
        let found = if std::fs::symlink_metadata(input).is_err() && is_glob(input) {
            let found = glob(input)?;
            if found.is_empty() {
                return Err(Error::InputFile {
                    path: input.clone(),
                    row: None,
                    reason: "no file matches this pattern".into(),
                });
            }
            found
        } else {
            let meta = std::fs::metadata(input).map_err(|e| Error::io(input, "open", e))?;
            if meta.is_dir() {
                let mut found = Vec::new();
                walk(input, &mut found)?;
                sort_by_bytes(&mut found);
                if found.is_empty() {
                    return Err(Error::InputFile {
                        path: input.clone(),
                        row: None,
                        reason: "the directory holds no input file (names starting with `.` \
                                 are skipped)"
                            .into(),
                    });
                }
                found
            } else {
                vec![input.clone()]
            }
        };
        for file in found {
            let key = std::fs::canonicalize(&file).unwrap_or_else(|_| file.clone());
            if seen.insert(key) {
                files.push(file);
            }
        }
    }
    Ok(files)
}

/// Sorts paths by their bytes (the order the docs promise, whatever the platform's collation).
fn sort_by_bytes(paths: &mut [PathBuf]) {
    paths.sort_by(|a, b| {
        a.as_os_str()
            .as_encoded_bytes()
            .cmp(b.as_os_str().as_encoded_bytes())
    });
}

/// Whether a name starts with `.`.
fn hidden(name: &std::ffi::OsStr) -> bool {
    name.as_encoded_bytes().first() == Some(&b'.')
}

/// Appends the regular files under `dir` (recursively, hidden names skipped) to `out`.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, "list", e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, "list", e))?;
        if hidden(&entry.file_name()) {
            continue;
        }
        let path = entry.path();
        let kind = entry.file_type().map_err(|e| Error::io(&path, "stat", e))?;
        if kind.is_dir() {
            walk(&path, out)?;
        } else if kind.is_file()
            || (kind.is_symlink() && std::fs::metadata(&path).is_ok_and(|m| m.is_file()))
        {
            out.push(path);
        }
    }
    Ok(())
}

/// Whether `path` has a glob character in a component.
fn is_glob(path: &Path) -> bool {
    path.components().any(|c| match c {
        Component::Normal(s) => s.to_string_lossy().contains(['*', '?', '[']),
        _ => false,
    })
}

/// The files a glob matches, sorted by path bytes (matching directories expanded).
fn glob(pattern: &Path) -> Result<Vec<PathBuf>> {
    let components: Vec<Component> = pattern.components().collect();
    let first = components
        .iter()
        .position(
            |c| matches!(c, Component::Normal(s) if s.to_string_lossy().contains(['*', '?', '['])),
        )
        .expect("glob is called for a pattern with a glob component");
    let mut current = vec![components[..first].iter().collect::<PathBuf>()];
    for (i, component) in components.iter().enumerate().skip(first) {
        let last = i + 1 == components.len();
        let Component::Normal(pat) = component else {
            current = current.iter().map(|p| p.join(component)).collect();
            continue;
        };
        let pat: Vec<char> = pat.to_string_lossy().chars().collect();
        let mut next = Vec::new();
        for dir in &current {
            let list = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            if !list.is_dir() {
                continue;
            }
            let entries = std::fs::read_dir(list).map_err(|e| Error::io(list, "list", e))?;
            for entry in entries {
                let entry = entry.map_err(|e| Error::io(list, "list", e))?;
                let name = entry.file_name();
                if hidden(&name) && pat.first() != Some(&'.') {
                    continue;
                }
                let chars: Vec<char> = name.to_string_lossy().chars().collect();
                if !glob_match(&pat, &chars) {
                    continue;
                }
                let path = dir.join(&name);
                if last || path.is_dir() {
                    next.push(path);
                }
            }
        }
        current = next;
    }
    let mut files = Vec::new();
    for path in current {
        if path.is_dir() {
            walk(&path, &mut files)?;
        } else if path.is_file() {
            files.push(path);
        }
    }
    sort_by_bytes(&mut files);
    Ok(files)
}

/// Whether `name` matches `pat`: `*` any run of characters, `?` one, `[abc]`, `[a-z]` and
/// `[!a]` (or `[^a]`) one of a class; a `[` without its `]` is itself.
fn glob_match(pat: &[char], name: &[char]) -> bool {
    let (mut p, mut n) = (0, 0);
    // Where the last `*` was, and how much of the name it has eaten so far.
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pat.len() {
            match pat[p] {
                '*' => {
                    star = Some((p, n));
                    p += 1;
                    continue;
                }
                '?' => {
                    p += 1;
                    n += 1;
                    continue;
                }
                '[' => {
                    if let Some((hit, len)) = class(&pat[p..], name[n]) {
                        if hit {
                            p += len;
                            n += 1;
                            continue;
                        }
                    } else if name[n] == '[' {
                        p += 1;
                        n += 1;
                        continue;
                    }
                }
                c if c == name[n] => {
                    p += 1;
                    n += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, sn)) => {
                p = sp + 1;
                n = sn + 1;
                star = Some((sp, sn + 1));
            }
            None => return false,
        }
    }
    pat[p..].iter().all(|&c| c == '*')
}

/// Whether `c` is in the class at the start of `pat` (`[...]`), and the class's length; `None`
/// when the class has no closing `]`.
fn class(pat: &[char], c: char) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(pat.get(i), Some('!' | '^'));
    if negate {
        i += 1;
    }
    let mut hit = false;
    let mut first = true;
    loop {
        let &ch = pat.get(i)?;
        if ch == ']' && !first {
            return Some((hit != negate, i + 1));
        }
        first = false;
        if pat.get(i + 1) == Some(&'-') && pat.get(i + 2).is_some_and(|&e| e != ']') {
            hit |= (ch..=pat[i + 2]).contains(&c);
            i += 3;
        } else {
            hit |= ch == c;
            i += 1;
        }
    }
}

/// A bad record: its kind, where it is, and what is wrong.
struct Bad {
    kind: BadKind,
    at: Location,
    reason: String,
}

impl Bad {
    fn into_error(self) -> Error {
        match self.at {
            Location::Line { path, line } => Error::Input {
                path,
                line,
                reason: self.reason,
            },
            Location::Row { path, group, row } => Error::InputFile {
                path,
                row: Some((group, row)),
                reason: self.reason,
            },
        }
    }
}

/// One record read: a document, or a bad record.
type Record = std::result::Result<Document, Bad>;

/// The documents of a list of inputs, in order: see the [module](self) documentation.
///
/// After an `Err` the iterator ends.
pub struct Documents {
    paths: std::vec::IntoIter<PathBuf>,
    field: String,
    /// `field`, split for JSON lines.
    json_field: FieldPath,
    format: InputFormat,
    skip_bad: bool,
    current: Option<Source>,
    total: Option<u64>,
    /// On-disk bytes of the files finished.
    done: u64,
    skipped: BTreeMap<BadKind, u64>,
    ended: bool,
}

impl Documents {
    /// Expands `config.inputs` (see [`expand`]) and prepares to read them; files are opened as
    /// the iterator reaches them.
    ///
    /// # Errors
    ///
    /// As [`expand`]; [`Error::Io`] when a file's size cannot be read.
    pub fn open(config: &InputConfig) -> Result<Documents> {
        let paths = expand(&config.inputs)?;
        let mut total = Some(0u64);
        for path in &paths {
            if path.as_os_str() == "-" {
                total = None;
                continue;
            }
            let meta = std::fs::metadata(path).map_err(|e| Error::io(path, "open", e))?;
            total = total.filter(|_| meta.is_file()).map(|t| t + meta.len());
        }
        Ok(Documents {
            paths: paths.into_iter(),
            field: config.field.clone(),
            json_field: FieldPath::new(&config.field),
            format: config.format,
            skip_bad: config.skip_bad,
            current: None,
            total,
            done: 0,
            skipped: BTreeMap::new(),
            ended: false,
        })
    }

    /// The inputs' size on disk (compressed size for compressed files); `None` when reading
    /// stdin or a file that is not a regular file.
    pub fn total_bytes(&self) -> Option<u64> {
        self.total
    }

    /// On-disk bytes consumed so far (read ahead by the buffers: for a progress bar); never
    /// decreases.
    pub fn bytes_read(&self) -> u64 {
        self.done + self.current.as_ref().map_or(0, Source::consumed)
    }

    /// The bad records skipped so far, by kind (only with `skip_bad`).
    pub fn skipped(&self) -> &BTreeMap<BadKind, u64> {
        &self.skipped
    }

    /// Ends the iterator with `error`.
    fn fail(&mut self, error: Error) -> Option<Result<Document>> {
        self.ended = true;
        self.current = None;
        Some(Err(error))
    }
}

impl Iterator for Documents {
    type Item = Result<Document>;

    fn next(&mut self) -> Option<Result<Document>> {
        loop {
            if self.ended {
                return None;
            }
            let source = match &mut self.current {
                Some(source) => source,
                None => {
                    let Some(path) = self.paths.next() else {
                        self.ended = true;
                        return None;
                    };
                    match Source::open(&path, self.format) {
                        Ok(source) => self.current.insert(source),
                        Err(e) => return self.fail(e),
                    }
                }
            };
            let got = match source {
                Source::Lines(lines) if lines.jsonl => lines.next_json(&self.json_field),
                Source::Lines(lines) => lines.next_paragraph(),
                Source::Parquet(table) => table.next_row(&self.field),
            };
            match got {
                Ok(Some(Ok(document))) => return Some(Ok(document)),
                Ok(Some(Err(bad))) if self.skip_bad => {
                    *self.skipped.entry(bad.kind).or_default() += 1;
                }
                Ok(Some(Err(bad))) => return self.fail(bad.into_error()),
                Ok(None) => {
                    self.done += source.consumed();
                    self.current = None;
                }
                Err(e) => return self.fail(e),
            }
        }
    }
}

/// The file being read.
enum Source {
    Lines(Lines),
    Parquet(Box<Table>),
}

impl Source {
    /// Opens `path` (`-`: stdin) and settles its format.
    fn open(path: &Path, format: InputFormat) -> Result<Source> {
        let stdin = path.as_os_str() == "-";
        // Errors name stdin as such, not `-`.
        let name = if stdin {
            PathBuf::from("<stdin>")
        } else {
            path.to_path_buf()
        };
        let (by_name, compressed) = if stdin {
            (InputFormat::Auto, None)
        } else {
            by_extension(path)
        };
        let format = match format {
            InputFormat::Auto => by_name,
            given => given,
        };
        if format == InputFormat::Parquet {
            if stdin {
                return Err(no_parquet_on_stdin());
            }
            return Table::open(path).map(|t| Source::Parquet(Box::new(t)));
        }
        let inner: Box<dyn Read + Send> = if stdin {
            Box::new(std::io::stdin())
        } else {
            let meta = std::fs::metadata(path).map_err(|e| Error::io(path, "open", e))?;
            if meta.is_dir() {
                return Err(Error::NotAFile {
                    path: name,
                    found: "a directory",
                });
            }
            Box::new(File::open(path).map_err(|e| Error::io(path, "open", e))?)
        };
        let consumed = Arc::new(AtomicU64::new(0));
        let raw = Counted {
            inner,
            count: consumed.clone(),
        };
        let mut raw = BufReader::with_capacity(1 << 20, raw);
        let head = raw.fill_buf().map_err(|e| Error::io(&name, "read", e))?;
        if format == InputFormat::Auto && compressed.is_none() && head.starts_with(b"PAR1") {
            if stdin {
                return Err(no_parquet_on_stdin());
            }
            return Table::open(path).map(|t| Source::Parquet(Box::new(t)));
        }
        // By extension, else by magic (neither magic starts valid UTF-8 text).
        let compressed = compressed.or(if head.starts_with(&[0x1f, 0x8b]) {
            Some(Compression::Gzip)
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Compression::Zstd)
        } else {
            None
        });
        let reader: Box<dyn BufRead + Send> = match compressed {
            None => Box::new(raw),
            Some(Compression::Gzip) => Box::new(BufReader::with_capacity(
                1 << 20,
                flate2::read::MultiGzDecoder::new(raw),
            )),
            Some(Compression::Zstd) => {
                let decoder = zstd::stream::read::Decoder::with_buffer(raw)
                    .map_err(|e| Error::io(&name, "start decompressing", e))?;
                Box::new(BufReader::with_capacity(1 << 20, decoder))
            }
        };
        Lines::new(name, reader, format, consumed).map(Source::Lines)
    }

    /// On-disk bytes consumed of this file.
    fn consumed(&self) -> u64 {
        match self {
            Source::Lines(lines) => lines.consumed.load(Ordering::Relaxed),
            Source::Parquet(table) => table.consumed,
        }
    }
}

/// The error for Parquet on stdin.
fn no_parquet_on_stdin() -> Error {
    Error::InputFile {
        path: PathBuf::from("<stdin>"),
        row: None,
        reason: "Parquet cannot be read from stdin (it needs a seekable file)".into(),
    }
}

/// A compression applied to a JSON lines or text file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Compression {
    Gzip,
    Zstd,
}

/// The format (`Auto` when the name does not say) and compression that `path`'s extensions
/// name, in any case.
fn by_extension(path: &Path) -> (InputFormat, Option<Compression>) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let (stem, compressed) = if let Some(stem) = name.strip_suffix(".gz") {
        (stem, Some(Compression::Gzip))
    } else if let Some(stem) = name.strip_suffix(".zst") {
        (stem, Some(Compression::Zstd))
    } else {
        (name.as_str(), None)
    };
    let format = match stem.rsplit_once('.').map(|(_, ext)| ext) {
        Some("jsonl" | "json" | "ndjson") => InputFormat::Jsonl,
        Some("txt" | "text" | "md") => InputFormat::Text,
        Some("parquet") if compressed.is_none() => InputFormat::Parquet,
        _ => InputFormat::Auto,
    };
    (format, compressed)
}

/// A reader that counts the bytes read through it (for [`Documents::bytes_read`]).
struct Counted<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// How [`read_line`] ended.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// A line, complete (its newline dropped, or the input's last line).
    Read,
    /// The end of the input, nothing read.
    End,
    /// The line passed the cap: `buf` holds `cap + 1` bytes, the rest is unread.
    TooLong,
}

/// Appends the next line, without its `\n`, to `buf`, reading no more than one byte past the
/// point where `buf` would exceed `cap` bytes.
fn read_line(reader: &mut impl BufRead, buf: &mut Vec<u8>, cap: usize) -> std::io::Result<Line> {
    let room = cap.saturating_sub(buf.len()) as u64 + 1;
    // std's `read_until` finds the newline with its optimized memchr, also in a debug build.
    let n = reader.by_ref().take(room).read_until(b'\n', buf)?;
    Ok(if n == 0 {
        Line::End
    } else if buf.last() == Some(&b'\n') {
        buf.pop();
        Line::Read
    } else if buf.len() > cap {
        Line::TooLong
    } else {
        Line::Read
    })
}

/// The error for a document longer than [`MAX_DOCUMENT_BYTES`], at `line`.
fn too_long(path: &Path, line: u64, what: &str) -> Error {
    Error::Input {
        path: path.to_path_buf(),
        line,
        reason: format!(
            "{what} passes {MAX_DOCUMENT_BYTES} bytes, the most one document can hold (with its \
             end-of-document id, the i32 length of a Megatron sequence); split it"
        ),
    }
}

/// A JSON lines or text file, read a line at a time.
struct Lines {
    path: PathBuf,
    reader: Box<dyn BufRead + Send>,
    jsonl: bool,
    /// The last line read, 1-based.
    line: u64,
    buf: Vec<u8>,
    consumed: Arc<AtomicU64>,
}

impl Lines {
    /// Reads `reader` as JSON lines or text (`Auto`: by the first non-blank byte, peeked).
    fn new(
        path: PathBuf,
        mut reader: Box<dyn BufRead + Send>,
        format: InputFormat,
        consumed: Arc<AtomicU64>,
    ) -> Result<Lines> {
        let jsonl = match format {
            InputFormat::Jsonl => true,
            InputFormat::Text => false,
            _ => {
                let head = reader.fill_buf().map_err(|e| Error::io(&path, "read", e))?;
                let head = head.strip_prefix(BOM).unwrap_or(head);
                head.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
            }
        };
        Ok(Lines {
            path,
            reader,
            jsonl,
            line: 0,
            buf: Vec::new(),
            consumed,
        })
    }

    /// The next JSON line's document; blank lines are skipped, and so is a UTF-8 byte order
    /// mark at the start of the input.
    fn next_json(&mut self, field: &FieldPath) -> Result<Option<Record>> {
        loop {
            self.buf.clear();
            self.line += 1;
            match read_line(&mut self.reader, &mut self.buf, MAX_JSON_LINE)
                .map_err(|e| Error::io(&self.path, "read", e))?
            {
                Line::End => return Ok(None),
                Line::TooLong => return Err(too_long(&self.path, self.line, "the line")),
                Line::Read => {}
            }
            let mut text = self.buf.as_slice();
            if self.line == 1 {
                text = text.strip_prefix(BOM).unwrap_or(text);
            }
            if text.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let at = Location::Line {
                path: self.path.clone(),
                line: self.line,
            };
            return json_document(text, field, at).map(Some);
        }
    }

    /// The next paragraph: lines up to a blank (or whitespace-only) line, joined by newlines
    /// (a `\r` before a newline dropped, and a UTF-8 byte order mark at the start of the
    /// input). A paragraph is refused as soon as it passes [`MAX_DOCUMENT_BYTES`].
    fn next_paragraph(&mut self) -> Result<Option<Record>> {
        let mut paragraph = Vec::new();
        let mut first = 0;
        loop {
            self.line += 1;
            // The line is read straight into the paragraph, after its separating newline.
            let start = paragraph.len() + usize::from(!paragraph.is_empty());
            if !paragraph.is_empty() {
                paragraph.push(b'\n');
            }
            let got = read_line(&mut self.reader, &mut paragraph, MAX_DOCUMENT_BYTES)
                .map_err(|e| Error::io(&self.path, "read", e))?;
            match got {
                Line::End => {
                    paragraph.truncate(start.saturating_sub(1));
                    break;
                }
                Line::TooLong => {
                    let first = if start == 0 { self.line } else { first };
                    let what = format!("the paragraph starting at line {first}");
                    return Err(too_long(&self.path, self.line, &what));
                }
                Line::Read => {}
            }
            if self.line == 1 && paragraph.starts_with(BOM) {
                paragraph.drain(..BOM.len());
            }
            if paragraph.last() == Some(&b'\r') && paragraph.len() > start {
                paragraph.pop();
            }
            if paragraph[start..].iter().all(u8::is_ascii_whitespace) {
                paragraph.truncate(start.saturating_sub(1));
                if !paragraph.is_empty() {
                    break;
                }
                continue;
            }
            if start == 0 {
                first = self.line;
            }
        }
        if paragraph.is_empty() {
            return Ok(None);
        }
        let at = Location::Line {
            path: self.path.clone(),
            line: first,
        };
        Ok(Some(match String::from_utf8(paragraph) {
            Ok(text) => Ok(Document { text, at }),
            Err(e) => {
                let bytes = e.as_bytes();
                let valid = e.utf8_error().valid_up_to();
                // The line of the bad byte, not only the paragraph's first.
                let before = &bytes[..valid];
                let line = first + before.iter().filter(|&&b| b == b'\n').count() as u64;
                let column = valid
                    - before
                        .iter()
                        .rposition(|&b| b == b'\n')
                        .map_or(0, |i| i + 1);
                Err(Bad {
                    kind: BadKind::InvalidUtf8,
                    at: Location::Line {
                        path: self.path.clone(),
                        line,
                    },
                    reason: format!("not UTF-8: invalid byte at column {}", column + 1),
                })
            }
        }))
    }
}

/// The document in `field` of the JSON object `line` (at `at`).
fn json_document(line: &[u8], path: &FieldPath, at: Location) -> Result<Record> {
    let field = path.name();
    let bad = |kind, reason: String| {
        Ok(Err(Bad {
            kind,
            at: at.clone(),
            reason,
        }))
    };
    let line = match std::str::from_utf8(line) {
        Ok(line) => line,
        Err(e) => {
            let reason = format!("not UTF-8: invalid byte at column {}", e.valid_up_to() + 1);
            return bad(BadKind::InvalidUtf8, reason);
        }
    };
    let found = match json_field::extract(line, path) {
        Ok(found) => found,
        Err(e) if line.as_bytes().starts_with(BOM) => {
            let reason = format!(
                "not valid JSON: it starts with a UTF-8 byte order mark, which only the first \
                 line may carry ({e})"
            );
            return bad(BadKind::MalformedJson, reason);
        }
        Err(e) => return bad(BadKind::MalformedJson, format!("not valid JSON: {e}")),
    };
    let text = match found {
        Field::Text(text) => text,
        Field::NotObject(kind) => {
            return bad(
                BadKind::MalformedJson,
                format!("not a JSON object but {kind}"),
            );
        }
        Field::Missing => {
            let reason = format!("no field \"{field}\" (use --field to pick another)");
            return bad(BadKind::MissingField, reason);
        }
        Field::Other(kind) => {
            let reason = format!("field \"{field}\" is not a string but {kind}");
            return bad(BadKind::NotAString, reason);
        }
    };
    let Location::Line { path, line } = &at else {
        unreachable!("JSON lines are located by line")
    };
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(too_long(path, *line, &format!("field \"{field}\"")));
    }
    if text.trim().is_empty() {
        return bad(
            BadKind::EmptyDocument,
            empty_reason(&format!("field \"{field}\""), &text),
        );
    }
    Ok(Ok(Document { text, at }))
}

/// "`what` is empty" or "`what` holds only whitespace".
fn empty_reason(what: &str, text: &str) -> String {
    if text.is_empty() {
        format!("{what} is empty")
    } else {
        format!("{what} holds only whitespace")
    }
}

/// A Parquet file, read one row group at a time, a batch of rows at a time.
struct Table {
    path: PathBuf,
    file: SerializedFileReader<File>,
    /// The leaf column holding the text.
    column: usize,
    /// Its definition level when a value is present (lower: a null here or above).
    max_def: i16,
    /// The row group being read (`groups` before the first).
    group: usize,
    reader: Option<ColumnReaderImpl<ByteArrayType>>,
    /// Rows of the group not yet decoded.
    rows_left: usize,
    /// The next row of the group to hand out.
    row: usize,
    defs: Vec<i16>,
    values: Vec<ByteArray>,
    /// The next row of the batch, and the next value.
    at_def: usize,
    at_value: usize,
    /// On-disk bytes of the row groups finished (the file's size once done).
    consumed: u64,
    size: u64,
}

impl Table {
    /// Opens the Parquet file at `path` (its footer only).
    fn open(path: &Path) -> Result<Table> {
        let file = File::open(path).map_err(|e| Error::io(path, "open", e))?;
        let size = file
            .metadata()
            .map_err(|e| Error::io(path, "stat", e))?
            .len();
        let file = SerializedFileReader::new(file).map_err(|e| Error::InputFile {
            path: path.to_path_buf(),
            row: None,
            reason: format!("not a readable Parquet file: {e}"),
        })?;
        Ok(Table {
            path: path.to_path_buf(),
            file,
            column: usize::MAX,
            max_def: 0,
            group: usize::MAX,
            reader: None,
            rows_left: 0,
            row: 0,
            defs: Vec::new(),
            values: Vec::new(),
            at_def: 0,
            at_value: 0,
            consumed: 0,
            size,
        })
    }

    /// An error about the file (`row`: at a row of the current group).
    fn error(&self, row: Option<usize>, reason: String) -> Error {
        Error::InputFile {
            path: self.path.clone(),
            row: row.map(|r| (self.group, r)),
            reason,
        }
    }

    /// What a failure to read the column in the current row group means.
    fn read_failure(&self, e: parquet::errors::ParquetError) -> String {
        let name = self
            .file
            .metadata()
            .file_metadata()
            .schema_descr()
            .column(self.column);
        let name = name.path().string();
        if matches!(e, parquet::errors::ParquetError::General(ref m) if m.contains("Disabled feature"))
        {
            let codec = self
                .file
                .metadata()
                .row_group(self.group)
                .column(self.column)
                .compression()
                .to_string();
            // Without its level: "ZSTD", not "ZSTD(ZstdLevel(1))".
            let codec = codec.split('(').next().unwrap_or_default();
            return format!(
                "column \"{name}\" is compressed with {codec}, which this build cannot \
                 decompress ({e})"
            );
        }
        format!("cannot read column \"{name}\": {e}")
    }

    /// Finds the string column `field` (on the first call).
    fn find_column(&mut self, field: &str) -> Result<()> {
        let schema = self.file.metadata().file_metadata().schema_descr();
        let found = schema
            .columns()
            .iter()
            .position(|c| c.path().string() == field);
        let Some(index) = found else {
            let names: Vec<String> = schema.columns().iter().map(|c| c.path().string()).collect();
            let group = names.iter().any(|n| n.starts_with(&format!("{field}.")));
            let reason = if group {
                format!("column \"{field}\" is a group (a struct, list or map), not a string")
            } else {
                format!(
                    "no column \"{field}\" (use --field to pick another); its columns: {}",
                    names.join(", ")
                )
            };
            return Err(self.error(None, reason));
        };
        let column = schema.column(index);
        let string = column.physical_type() == PhysicalType::BYTE_ARRAY
            && (matches!(column.logical_type_ref(), Some(LogicalType::String))
                || column.converted_type() == ConvertedType::UTF8);
        if !string {
            let mut kind = column.physical_type().to_string();
            if let Some(logical) = column.logical_type_ref() {
                kind = format!("{kind} ({logical:?})");
            } else if column.converted_type() != ConvertedType::NONE {
                kind = format!("{kind} ({})", column.converted_type());
            }
            let reason = format!("column \"{field}\" holds {kind}, not strings (UTF8)");
            return Err(self.error(None, reason));
        }
        if column.max_rep_level() > 0 {
            let reason = format!("column \"{field}\" is inside a list: a row holds many strings");
            return Err(self.error(None, reason));
        }
        self.column = index;
        self.max_def = column.max_def_level();
        Ok(())
    }

    /// The next row's document.
    fn next_row(&mut self, field: &str) -> Result<Option<Record>> {
        if self.column == usize::MAX {
            self.find_column(field)?;
        }
        loop {
            if self.at_def < self.defs.len() {
                let def = self.defs[self.at_def];
                self.at_def += 1;
                let row = self.row;
                self.row += 1;
                let at = Location::Row {
                    path: self.path.clone(),
                    group: self.group,
                    row,
                };
                if def < self.max_def {
                    let reason = format!("column \"{field}\" is null");
                    return Ok(Some(Err(Bad {
                        kind: BadKind::MissingField,
                        at,
                        reason,
                    })));
                }
                let value = &self.values[self.at_value];
                self.at_value += 1;
                return self.document(value.data(), field, at).map(Some);
            }
            if self.rows_left > 0 {
                self.read_batch()?;
                continue;
            }
            // The next row group.
            let groups = self.file.num_row_groups();
            if self.group != usize::MAX {
                let size = self.file.metadata().row_group(self.group).compressed_size();
                self.consumed = (self.consumed + size.max(0) as u64).min(self.size);
            }
            self.group = self.group.wrapping_add(1);
            if self.group >= groups {
                self.reader = None;
                self.consumed = self.size;
                return Ok(None);
            }
            let group = self
                .file
                .get_row_group(self.group)
                .map_err(|e| self.error(None, e.to_string()))?;
            self.rows_left = group.metadata().num_rows().max(0) as usize;
            self.row = 0;
            let reader = group
                .get_column_reader(self.column)
                .map_err(|e| self.error(Some(0), self.read_failure(e)))?;
            let ColumnReader::ByteArrayColumnReader(reader) = reader else {
                unreachable!("find_column checked the column holds BYTE_ARRAY values")
            };
            self.reader = Some(reader);
        }
    }

    /// Decodes the next batch of rows of the current group.
    fn read_batch(&mut self) -> Result<()> {
        let want = self.rows_left.min(PARQUET_BATCH);
        self.defs.clear();
        self.values.clear();
        self.at_def = 0;
        self.at_value = 0;
        let reader = self
            .reader
            .as_mut()
            .expect("a group with rows left has a reader");
        let defs = (self.max_def > 0).then_some(&mut self.defs);
        let read = reader.read_records(want, defs, None, &mut self.values);
        let (records, values, _) =
            read.map_err(|e| self.error(Some(self.row), self.read_failure(e)))?;
        if self.max_def == 0 {
            self.defs.resize(records, 0);
        }
        if records == 0 || self.defs.len() != records || values > records {
            let reason = format!(
                "the column chunk ends after {} rows; the row group holds {}",
                self.row,
                self.row + self.rows_left
            );
            return Err(self.error(Some(self.row), reason));
        }
        self.rows_left -= records;
        Ok(())
    }

    /// The document of one value.
    fn document(&self, bytes: &[u8], field: &str, at: Location) -> Result<Record> {
        let bad = |kind, reason: String| {
            Ok(Err(Bad {
                kind,
                at: at.clone(),
                reason,
            }))
        };
        if bytes.len() > MAX_DOCUMENT_BYTES {
            let reason = format!(
                "the value passes {MAX_DOCUMENT_BYTES} bytes, the most one document can hold \
                 (with its end-of-document id, the i32 length of a Megatron sequence); split it"
            );
            return Err(self.error(Some(self.row - 1), reason));
        }
        let text = match std::str::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => {
                let reason = format!("not UTF-8: invalid byte at offset {}", e.valid_up_to());
                return bad(BadKind::InvalidUtf8, reason);
            }
        };
        if text.trim().is_empty() {
            return bad(
                BadKind::EmptyDocument,
                empty_reason(&format!("column \"{field}\""), text),
            );
        }
        Ok(Ok(Document {
            text: text.to_string(),
            at,
        }))
    }
}
