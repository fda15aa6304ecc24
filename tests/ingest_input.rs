//! `shardflow::ingest::input`: every format (JSON lines, text, gzip, zstd, Parquet) gives the
//! same documents with their file and line (or row group and row); inputs expand to files
//! sorted by path bytes whatever their creation order; every bad kind is an error naming where
//! it is, or a counted skip.
#![cfg(feature = "ingest")]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use shardflow::Error;
use shardflow::ingest::input::{Documents, InputConfig, InputFormat, expand};
use shardflow::ingest::{BadKind, Document, Location};

fn config(inputs: &[&Path], field: &str, skip_bad: bool) -> InputConfig {
    InputConfig {
        inputs: inputs.iter().map(|p| p.to_path_buf()).collect(),
        field: field.into(),
        format: InputFormat::Auto,
        skip_bad,
    }
}

/// Every document of `inputs`, as (text, location).
fn read(inputs: &[&Path], field: &str) -> Vec<Document> {
    Documents::open(&config(inputs, field, false))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn texts(docs: &[Document]) -> Vec<&str> {
    docs.iter().map(|d| d.text.as_str()).collect()
}

fn lines(docs: &[Document]) -> Vec<u64> {
    docs.iter()
        .map(|d| match &d.at {
            Location::Line { line, .. } => *line,
            other => panic!("{other:?} is not a line"),
        })
        .collect()
}

/// The error the first bad record gives, as the user reads it.
fn first_error(inputs: &[&Path], field: &str) -> (Error, usize) {
    let mut docs = Documents::open(&config(inputs, field, false)).unwrap();
    let mut good = 0;
    for doc in docs.by_ref() {
        match doc {
            Ok(_) => good += 1,
            Err(e) => {
                // After an error the iterator ends.
                assert!(docs.next().is_none());
                return (e, good);
            }
        }
    }
    panic!("no error in {inputs:?}");
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    out.write_all(bytes).unwrap();
    out.finish().unwrap()
}

const JSONL: &str = "{\"text\": \"one\", \"n\": 1}\n\n{\"n\": 2, \"text\": \"two\\nlines\"}\n  \n{\"text\": \"thré\"}\n";

#[test]
fn json_lines_plain_gzip_multi_member_and_zstd_give_the_same_documents() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("a.jsonl");
    std::fs::write(&plain, JSONL).unwrap();
    // Two gzip members, split inside the second line: one stream to the reader.
    let gz = dir.path().join("b.JSONL.gz");
    let (head, tail) = JSONL.as_bytes().split_at(30);
    std::fs::write(&gz, [gzip(head), gzip(tail)].concat()).unwrap();
    let zst = dir.path().join("c.ndjson.zst");
    std::fs::write(&zst, zstd::stream::encode_all(JSONL.as_bytes(), 1).unwrap()).unwrap();
    // No extension: gzip by its magic, then JSON lines by the first byte.
    let sniffed = dir.path().join("d");
    std::fs::write(&sniffed, gzip(JSONL.as_bytes())).unwrap();
    for path in [&plain, &gz, &zst, &sniffed] {
        let docs = read(&[path], "text");
        assert_eq!(texts(&docs), ["one", "two\nlines", "thré"], "{path:?}");
        assert_eq!(lines(&docs), [1, 3, 5], "{path:?}");
        assert!(docs.iter().all(|d| d.at
            == Location::Line {
                path: path.clone(),
                line: d.at_line()
            }));
    }
}

trait AtLine {
    fn at_line(&self) -> u64;
}

impl AtLine for Document {
    fn at_line(&self) -> u64 {
        match &self.at {
            Location::Line { line, .. } => *line,
            Location::Row { .. } => panic!("not a line"),
        }
    }
}

#[test]
fn text_paragraphs_keep_the_write_command_semantics() {
    let dir = tempfile::tempdir().unwrap();
    let text = "\u{feff}hello\n\nworld\r\nagain\n \t\n\n\nlast line\nno newline";
    let plain = dir.path().join("a.txt");
    std::fs::write(&plain, text).unwrap();
    let gz = dir.path().join("b.txt.gz");
    std::fs::write(&gz, gzip(text.as_bytes())).unwrap();
    // No extension, first byte not `{`: text.
    let sniffed = dir.path().join("notes");
    std::fs::write(&sniffed, text).unwrap();
    for path in [&plain, &gz, &sniffed] {
        let docs = read(&[path], "text");
        assert_eq!(
            texts(&docs),
            ["hello", "world\nagain", "last line\nno newline"],
            "{path:?}"
        );
        assert_eq!(lines(&docs), [1, 3, 8], "{path:?}");
    }
    // A forced format wins over the extension.
    let forced = Documents::open(&InputConfig {
        format: InputFormat::Text,
        ..config(&[&dir.path().join("x.jsonl")], "text", false)
    });
    assert!(matches!(forced, Err(Error::MissingFile { .. })));
    let jsonl_as_text = dir.path().join("j.jsonl");
    std::fs::write(&jsonl_as_text, "{\"text\": 1}\n").unwrap();
    let docs: Vec<_> = Documents::open(&InputConfig {
        format: InputFormat::Text,
        ..config(&[&jsonl_as_text], "text", false)
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap();
    assert_eq!(texts(&docs), ["{\"text\": 1}"]);
}

#[test]
fn a_dotted_field_reaches_into_nested_objects() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested.jsonl");
    std::fs::write(
        &path,
        "{\"meta\": {\"text\": \"deep\", \"x\": 1}}\n{\"meta.text\": \"literal key\"}\n\
         {\"meta\": {\"inner\": {\"text\": \"deeper\"}}}\n",
    )
    .unwrap();
    let mut docs = Documents::open(&config(&[&path], "meta.text", true)).unwrap();
    let got: Vec<String> = docs.by_ref().map(|d| d.unwrap().text).collect();
    assert_eq!(got, ["deep", "literal key"]);
    assert_eq!(
        docs.skipped(),
        &BTreeMap::from([(BadKind::MissingField, 1)])
    );
    let mut docs = Documents::open(&config(&[&path], "meta.inner.text", true)).unwrap();
    assert_eq!(docs.next().unwrap().unwrap().text, "deeper");
    assert_eq!(docs.next().map(|d| d.is_ok()), None);
}

/// The rows of one Parquet file: row groups of (text, meta.body) values.
type Groups<'a> = &'a [&'a [(Option<&'a [u8]>, Option<&'a [u8]>)]];

/// Writes a Parquet file with an optional UTF8 column `text`, a required INT64 `n`, an optional
/// group `meta` with an optional UTF8 `body` and a BYTE_ARRAY `raw` without a string type.
fn write_parquet(path: &Path, groups: Groups) {
    let schema = parse_message_type(
        "message doc {
            optional binary text (UTF8);
            required int64 n;
            optional group meta { optional binary body (UTF8); }
            required binary raw;
        }",
    )
    .unwrap();
    let props = WriterProperties::builder().build();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = SerializedFileWriter::new(file, Arc::new(schema), Arc::new(props)).unwrap();
    let mut n = 0i64;
    for rows in groups {
        let mut group = writer.next_row_group().unwrap();
        let bytes = |v: Option<&[u8]>| v.map(|b| ByteArray::from(b.to_vec()));
        // text
        let mut col = group.next_column().unwrap().unwrap();
        let values: Vec<ByteArray> = rows.iter().filter_map(|r| bytes(r.0)).collect();
        let defs: Vec<i16> = rows.iter().map(|r| r.0.is_some() as i16).collect();
        col.typed::<ByteArrayType>()
            .write_batch(&values, Some(&defs), None)
            .unwrap();
        col.close().unwrap();
        // n
        let mut col = group.next_column().unwrap().unwrap();
        let values: Vec<i64> = rows
            .iter()
            .map(|_| {
                n += 1;
                n
            })
            .collect();
        col.typed::<Int64Type>()
            .write_batch(&values, None, None)
            .unwrap();
        col.close().unwrap();
        // meta.body: meta is always present, body when given.
        let mut col = group.next_column().unwrap().unwrap();
        let values: Vec<ByteArray> = rows.iter().filter_map(|r| bytes(r.1)).collect();
        let defs: Vec<i16> = rows.iter().map(|r| 1 + r.1.is_some() as i16).collect();
        col.typed::<ByteArrayType>()
            .write_batch(&values, Some(&defs), None)
            .unwrap();
        col.close().unwrap();
        // raw
        let mut col = group.next_column().unwrap().unwrap();
        let values: Vec<ByteArray> = rows.iter().map(|_| ByteArray::from(&b"x"[..])).collect();
        col.typed::<ByteArrayType>()
            .write_batch(&values, None, None)
            .unwrap();
        col.close().unwrap();
        group.close().unwrap();
    }
    writer.close().unwrap();
}

fn rows(docs: &[Document]) -> Vec<(usize, usize)> {
    docs.iter()
        .map(|d| match &d.at {
            Location::Row { group, row, .. } => (*group, *row),
            other => panic!("{other:?} is not a row"),
        })
        .collect()
}

#[test]
fn parquet_is_read_row_group_by_row_group_from_a_string_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("docs.parquet");
    // 600 rows in the middle group: several batches of the reader.
    let many: Vec<String> = (0..600).map(|i| format!("doc {i}")).collect();
    let middle: Vec<_> = many
        .iter()
        .map(|s| (Some(s.as_bytes()), Some(&b"body"[..])))
        .collect();
    let first = [
        (Some(&b"alpha"[..]), Some(&b"a body"[..])),
        (Some(b"beta"), None),
    ];
    let last = [(Some(&b"omega"[..]), Some(&b"z"[..]))];
    write_parquet(&path, &[&first, &middle, &last]);
    let docs = read(&[&path], "text");
    let mut want = vec!["alpha", "beta"];
    want.extend(many.iter().map(String::as_str));
    want.push("omega");
    assert_eq!(texts(&docs), want);
    let mut places = vec![(0, 0), (0, 1)];
    places.extend((0..600).map(|r| (1, r)));
    places.push((2, 0));
    assert_eq!(rows(&docs), places);
    assert!(
        docs.iter()
            .all(|d| matches!(&d.at, Location::Row { path: p, .. } if p == &path))
    );
    // A nested column by its dotted path; the null in row group 0 row 1 is a missing field.
    let (err, good) = first_error(&[&path], "meta.body");
    assert_eq!(good, 1);
    assert_eq!(
        err.to_string(),
        format!(
            "{} row group 0 row 1: column \"meta.body\" is null",
            path.display()
        )
    );
    let mut skipping = Documents::open(&config(&[&path], "meta.body", true)).unwrap();
    assert_eq!(skipping.by_ref().filter_map(Result::ok).count(), 602);
    assert_eq!(
        skipping.skipped(),
        &BTreeMap::from([(BadKind::MissingField, 1)])
    );
    // No extension: Parquet by its magic.
    let sniffed = dir.path().join("table");
    std::fs::copy(&path, &sniffed).unwrap();
    assert_eq!(read(&[&sniffed], "text").len(), 603);
}

#[test]
fn a_parquet_column_that_is_missing_or_not_strings_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("docs.parquet");
    write_parquet(&path, &[&[(Some(b"a"), None)]]);
    let p = path.display();
    let cases = [
        (
            "n",
            format!("{p}: column \"n\" holds INT64, not strings (UTF8)"),
        ),
        (
            "raw",
            format!("{p}: column \"raw\" holds BYTE_ARRAY, not strings (UTF8)"),
        ),
        (
            "meta",
            format!("{p}: column \"meta\" is a group (a struct, list or map), not a string"),
        ),
        (
            "body",
            format!(
                "{p}: no column \"body\" (use --field to pick another); its columns: text, n, \
                 meta.body, raw"
            ),
        ),
    ];
    for (field, want) in cases {
        let (err, good) = first_error(&[&path], field);
        assert_eq!(good, 0);
        assert!(matches!(err, Error::InputFile { row: None, .. }), "{err:?}");
        assert_eq!(err.to_string(), want);
    }
    // A file that claims to be Parquet and is not.
    let fake = dir.path().join("fake.parquet");
    std::fs::write(&fake, "{\"text\": \"x\"}\n").unwrap();
    let (err, _) = first_error(&[&fake], "text");
    assert!(
        err.to_string().starts_with(&format!(
            "{}: not a readable Parquet file: ",
            fake.display()
        )),
        "{err}"
    );
}

#[test]
fn every_bad_parquet_row_is_an_error_with_its_row_group_and_row_or_a_counted_skip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.parquet");
    let ok = (Some(&b"fine"[..]), None);
    let null = (None, None);
    let invalid = (Some(&b"caf\xe9"[..]), None);
    let empty = (Some(&b""[..]), None);
    let blank = (Some(&b" \n\t"[..]), None);
    write_parquet(&path, &[&[ok, null], &[ok, invalid, empty], &[blank, ok]]);
    let p = path.display();
    let (err, _) = first_error(&[&path], "text");
    assert_eq!(
        err.to_string(),
        format!("{p} row group 0 row 1: column \"text\" is null")
    );
    let mut docs = Documents::open(&config(&[&path], "text", true)).unwrap();
    let got: Vec<Document> = docs.by_ref().collect::<Result<_, _>>().unwrap();
    assert_eq!(rows(&got), [(0, 0), (1, 0), (2, 1)]);
    assert_eq!(
        docs.skipped(),
        &BTreeMap::from([
            (BadKind::MissingField, 1),
            (BadKind::InvalidUtf8, 1),
            (BadKind::EmptyDocument, 2)
        ])
    );
    // Each kind as the error, where it is.
    for (groups, want) in [
        (
            &[&[invalid][..]][..],
            "row group 0 row 0: not UTF-8: invalid byte at offset 3",
        ),
        (
            &[&[ok, ok][..], &[ok, empty][..]][..],
            "row group 1 row 1: column \"text\" is empty",
        ),
        (
            &[&[blank][..]][..],
            "row group 0 row 0: column \"text\" holds only whitespace",
        ),
    ] {
        write_parquet(&path, groups);
        let (err, _) = first_error(&[&path], "text");
        assert!(matches!(err, Error::InputFile { row: Some(_), .. }));
        assert_eq!(err.to_string(), format!("{p} {want}"));
    }
}

#[test]
fn every_bad_json_line_is_an_error_with_file_and_line_or_a_counted_skip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.jsonl");
    let p = path.display();
    let good = "{\"text\": \"good\"}";
    let cases: [(&[u8], BadKind, String); 9] = [
        (
            b"{\"text\": ",
            BadKind::MalformedJson,
            "not valid JSON: EOF while parsing a value at line 1 column 9".into(),
        ),
        (
            b"[\"text\"]",
            BadKind::MalformedJson,
            "not a JSON object but an array".into(),
        ),
        (
            b"\"text\"",
            BadKind::MalformedJson,
            "not a JSON object but a string".into(),
        ),
        (
            b"{\"other\": \"x\"}",
            BadKind::MissingField,
            "no field \"text\" (use --field to pick another)".into(),
        ),
        (
            b"{\"text\": null}",
            BadKind::MissingField,
            "no field \"text\" (use --field to pick another)".into(),
        ),
        (
            b"{\"text\": 3}",
            BadKind::NotAString,
            "field \"text\" is not a string but a number".into(),
        ),
        (
            b"{\"text\": \"caf\xe9\"}",
            BadKind::InvalidUtf8,
            "not UTF-8: invalid byte at column 14".into(),
        ),
        (
            b"{\"text\": \"\"}",
            BadKind::EmptyDocument,
            "field \"text\" is empty".into(),
        ),
        (
            b"{\"text\": \" \\n\"}",
            BadKind::EmptyDocument,
            "field \"text\" holds only whitespace".into(),
        ),
    ];
    let mut all = Vec::new();
    let mut want_skipped = BTreeMap::new();
    for (bad, kind, reason) in &cases {
        // The bad line is line 3, after a good line and a blank one.
        let input = [good.as_bytes(), b"\n\n", bad, b"\n", good.as_bytes(), b"\n"].concat();
        std::fs::write(&path, &input).unwrap();
        let (err, before) = first_error(&[&path], "text");
        assert_eq!(before, 1);
        assert!(matches!(err, Error::Input { line: 3, .. }), "{err:?}");
        assert_eq!(err.to_string(), format!("{p} line 3: {reason}"));
        all.extend_from_slice(bad);
        all.push(b'\n');
        *want_skipped.entry(*kind).or_insert(0u64) += 1;
    }
    all.extend_from_slice(good.as_bytes());
    std::fs::write(&path, &all).unwrap();
    let mut docs = Documents::open(&config(&[&path], "text", true)).unwrap();
    let got: Vec<Document> = docs.by_ref().collect::<Result<_, _>>().unwrap();
    assert_eq!(texts(&got), ["good"]);
    assert_eq!(lines(&got), [10]);
    assert_eq!(docs.skipped(), &want_skipped);
    assert_eq!(
        want_skipped.len(),
        BadKind::ALL.len(),
        "every kind is tested"
    );
    // A byte order mark is only allowed on line 1.
    std::fs::write(&path, "{\"text\": \"hi\"}\n\u{feff}{\"text\": \"yo\"}\n").unwrap();
    let (err, _) = first_error(&[&path], "text");
    assert!(
        err.to_string().starts_with(&format!(
            "{p} line 2: not valid JSON: it starts with a UTF-8 byte order mark, which only the \
             first line may carry ("
        )),
        "{err}"
    );
}

#[test]
fn invalid_utf8_in_text_names_the_line_of_the_bad_byte() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.txt");
    std::fs::write(&path, b"fine\n\nfirst line\nsecond \xff line\n\nafter\n").unwrap();
    let (err, good) = first_error(&[&path], "text");
    assert_eq!(good, 1);
    assert_eq!(
        err.to_string(),
        format!(
            "{} line 4: not UTF-8: invalid byte at column 8",
            path.display()
        )
    );
    let mut docs = Documents::open(&config(&[&path], "text", true)).unwrap();
    let got: Vec<Document> = docs.by_ref().collect::<Result<_, _>>().unwrap();
    assert_eq!(texts(&got), ["fine", "after"]);
    assert_eq!(lines(&got), [1, 6]);
    assert_eq!(docs.skipped(), &BTreeMap::from([(BadKind::InvalidUtf8, 1)]));
}

/// Creates `names` under `root` in the order given (directories as needed).
fn touch(root: &Path, names: &[&str]) {
    for name in names {
        let path = root.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, format!("{{\"text\": \"{name}\"}}\n")).unwrap();
    }
}

fn relative(root: &Path, paths: &[PathBuf]) -> Vec<String> {
    paths
        .iter()
        .map(|p| p.strip_prefix(root).unwrap().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn directories_and_globs_expand_sorted_by_path_bytes_whatever_the_creation_order() {
    let names = [
        "b/x.jsonl",
        "a.jsonl",
        "b.jsonl",
        "B.jsonl",
        "c/d/e.txt",
        ".hidden.jsonl",
        "b/.h/y.jsonl",
        "a10.jsonl",
        "a2.jsonl",
    ];
    let sorted = [
        "B.jsonl",
        "a.jsonl",
        "a10.jsonl",
        "a2.jsonl",
        "b.jsonl",
        "b/x.jsonl",
        "c/d/e.txt",
    ];
    let mut orders = vec![names.to_vec()];
    orders.push(names.iter().rev().copied().collect());
    for order in orders {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        touch(root, &order);
        assert_eq!(
            relative(root, &expand(&[root.to_path_buf()]).unwrap()),
            sorted
        );
        let glob = |pattern: &str| relative(root, &expand(&[root.join(pattern)]).unwrap());
        assert_eq!(
            glob("*.jsonl"),
            ["B.jsonl", "a.jsonl", "a10.jsonl", "a2.jsonl", "b.jsonl"]
        );
        assert_eq!(glob("a?.jsonl"), ["a2.jsonl"]);
        assert_eq!(
            glob("[ab]*.jsonl"),
            ["a.jsonl", "a10.jsonl", "a2.jsonl", "b.jsonl"]
        );
        assert_eq!(glob("[!a-b]*"), ["B.jsonl", "c/d/e.txt"]);
        assert_eq!(glob(".*.jsonl"), [".hidden.jsonl"]);
        assert_eq!(glob("*/*.jsonl"), ["b/x.jsonl"]);
        assert_eq!(glob("c/*/e.t?t"), ["c/d/e.txt"]);
        // A matching directory gives its files.
        assert_eq!(glob("[bc]"), ["b/x.jsonl", "c/d/e.txt"]);
        // Inputs in the order given; a file named again (here through the glob) is read once.
        let inputs = [
            root.join("b.jsonl"),
            root.join("a*.jsonl"),
            root.join("./b.jsonl"),
        ];
        assert_eq!(
            relative(root, &expand(&inputs).unwrap()),
            ["b.jsonl", "a.jsonl", "a10.jsonl", "a2.jsonl"]
        );
        // The documents follow the expansion.
        let docs = read(&[&root.join("a*.jsonl"), &root.join("b")], "text");
        assert_eq!(
            texts(&docs),
            ["a.jsonl", "a10.jsonl", "a2.jsonl", "b/x.jsonl"]
        );
    }
}

#[test]
fn a_missing_input_or_an_empty_pattern_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    touch(root, &["a.jsonl"]);
    std::fs::create_dir(root.join("empty")).unwrap();
    touch(root, &["empty/.hidden"]);
    let missing = root.join("missing.jsonl");
    let err = expand(&[root.join("a.jsonl"), missing.clone()]).unwrap_err();
    assert!(
        matches!(&err, Error::MissingFile { path } if path == &missing),
        "{err:?}"
    );
    let pattern = root.join("*.parquet");
    let err = expand(std::slice::from_ref(&pattern)).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{}: no file matches this pattern", pattern.display())
    );
    let err = expand(&[root.join("empty")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: the directory holds no input file (names starting with `.` are skipped)",
            root.join("empty").display()
        )
    );
    let err = expand(&[PathBuf::from("-"), root.join("a.jsonl")]).unwrap_err();
    assert_eq!(err.to_string(), "-: stdin (`-`) must be the only input");
    assert_eq!(expand(&[PathBuf::from("-")]).unwrap(), [PathBuf::from("-")]);
    // A file whose name holds glob characters is taken as it is.
    touch(root, &["odd[1].jsonl"]);
    assert_eq!(
        expand(&[root.join("odd[1].jsonl")]).unwrap(),
        [root.join("odd[1].jsonl")]
    );
}

#[test]
fn bytes_read_climbs_to_the_total_size_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("a.jsonl");
    let body: String = (0..2000)
        .map(|i| format!("{{\"text\": \"document {i}\"}}\n"))
        .collect();
    std::fs::write(&plain, &body).unwrap();
    let gz = dir.path().join("b.jsonl.gz");
    std::fs::write(&gz, gzip(body.as_bytes())).unwrap();
    let pq = dir.path().join("c.parquet");
    write_parquet(&pq, &[&[(Some(b"x"), None)], &[(Some(b"y"), None)]]);
    let total: u64 = [&plain, &gz, &pq]
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    let mut docs = Documents::open(&config(&[&plain, &gz, &pq], "text", false)).unwrap();
    assert_eq!(docs.total_bytes(), Some(total));
    assert_eq!(docs.bytes_read(), 0);
    let (mut last, mut count) = (0, 0);
    while let Some(doc) = docs.next() {
        doc.unwrap();
        count += 1;
        assert!(docs.bytes_read() >= last);
        assert!(docs.bytes_read() <= total);
        last = docs.bytes_read();
    }
    assert_eq!(count, 4002);
    assert_eq!(docs.bytes_read(), total);
}

#[test]
fn documents_can_move_to_a_reader_thread() {
    fn send<T: Send>() {}
    send::<Documents>();
}
