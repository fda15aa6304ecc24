//! The two tables' schemas and their rows in columnar buffers: what a part file holds, written
//! as one row group with the `parquet` crate's column writers and read back row group by row
//! group with its column readers, so neither side ever holds more than one part in memory.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use parquet::basic::Compression;
use parquet::column::reader::ColumnReader;
use parquet::column::writer::ColumnWriter;
use parquet::data_type::ByteArray;
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use parquet::schema::types::Type;

use crate::error::{Error, Result};

/// A column's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// UTF-8 text.
    Str,
    /// A 64-bit integer.
    I64,
    /// A timestamp in milliseconds since the Unix epoch (UTC).
    Millis,
    /// A double, never null.
    F64,
    /// A double or null.
    OptF64,
}

/// A table: its name (the directory of its parts) and its columns.
#[derive(Debug)]
pub(crate) struct TableDef {
    pub name: &'static str,
    pub columns: &'static [(&'static str, Kind)],
}

/// `steps`: one row per reported value.
pub(crate) const STEPS: TableDef = TableDef {
    name: "steps",
    columns: &[
        ("run", Kind::Str),
        ("step", Kind::I64),
        ("rank", Kind::Str),
        ("dataset", Kind::Str),
        ("metric", Kind::Str),
        ("stat", Kind::Str),
        ("value", Kind::F64),
        ("wall_time", Kind::Millis),
    ],
};

/// `samples`: one row per recorded per-sample value.
pub(crate) const SAMPLES: TableDef = TableDef {
    name: "samples",
    columns: &[
        ("run", Kind::Str),
        ("step", Kind::I64),
        ("rank", Kind::I64),
        ("dataset", Kind::Str),
        ("sample", Kind::I64),
        ("epoch", Kind::I64),
        ("name", Kind::Str),
        ("value", Kind::OptF64),
        ("status", Kind::Str),
    ],
};

/// The column `step`, in both tables.
pub(crate) const STEP: usize = 1;

impl TableDef {
    /// The Parquet schema.
    fn schema(&self) -> Type {
        let fields: String = self
            .columns
            .iter()
            .map(|(name, kind)| match kind {
                Kind::Str => format!("REQUIRED BYTE_ARRAY {name} (UTF8);"),
                Kind::I64 => format!("REQUIRED INT64 {name};"),
                Kind::Millis => format!("REQUIRED INT64 {name} (TIMESTAMP(MILLIS,true));"),
                Kind::F64 => format!("REQUIRED DOUBLE {name};"),
                Kind::OptF64 => format!("OPTIONAL DOUBLE {name};"),
            })
            .collect();
        parse_message_type(&format!("message {} {{ {fields} }}", self.name))
            .expect("the tables' schemas parse")
    }

    /// An empty buffer of this table's rows.
    pub fn rows(&'static self) -> Rows {
        Rows {
            table: self,
            columns: self.columns.iter().map(|(_, k)| Column::new(*k)).collect(),
            len: 0,
        }
    }
}

/// Text interned per buffer: each distinct string once, a u32 per row.
#[derive(Default)]
struct Strings {
    index: HashMap<String, u32>,
    dict: Vec<ByteArray>,
    bytes: usize,
    ids: Vec<u32>,
}

/// One column's values.
enum Column {
    Str(Strings),
    I64(Vec<i64>),
    F64(Vec<f64>),
    OptF64(Vec<Option<f64>>),
}

impl Column {
    fn new(kind: Kind) -> Self {
        match kind {
            Kind::Str => Column::Str(Strings::default()),
            Kind::I64 | Kind::Millis => Column::I64(Vec::new()),
            Kind::F64 => Column::F64(Vec::new()),
            Kind::OptF64 => Column::OptF64(Vec::new()),
        }
    }
}

/// A value of a row, as [`Rows::push`] takes it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Value<'a> {
    Str(&'a str),
    I64(i64),
    F64(f64),
    OptF64(Option<f64>),
}

/// Rows of one table, column by column.
pub(crate) struct Rows {
    table: &'static TableDef,
    columns: Vec<Column>,
    len: usize,
}

impl Rows {
    /// Rows held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no rows are held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes the buffer holds: values, row ids and the distinct strings (with the index's
    /// copy of each).
    pub fn bytes(&self) -> usize {
        self.columns
            .iter()
            .map(|c| match c {
                Column::Str(s) => 4 * s.ids.len() + 2 * s.bytes + 64 * s.dict.len(),
                Column::I64(v) => 8 * v.len(),
                Column::F64(v) => 8 * v.len(),
                Column::OptF64(v) => 16 * v.len(),
            })
            .sum()
    }

    /// Appends a row, one value per column in the table's order.
    ///
    /// # Panics
    ///
    /// If the values do not match the table's columns (a bug in this module's callers).
    pub fn push(&mut self, row: &[Value<'_>]) {
        assert_eq!(row.len(), self.columns.len(), "{} row", self.table.name);
        for (column, value) in self.columns.iter_mut().zip(row) {
            match (column, *value) {
                (Column::Str(s), Value::Str(text)) => {
                    let id = match s.index.get(text) {
                        Some(&id) => id,
                        None => {
                            let id = s.dict.len() as u32;
                            s.index.insert(text.to_string(), id);
                            s.dict.push(ByteArray::from(text.as_bytes().to_vec()));
                            s.bytes += text.len();
                            id
                        }
                    };
                    s.ids.push(id);
                }
                (Column::I64(v), Value::I64(x)) => v.push(x),
                (Column::F64(v), Value::F64(x)) => v.push(x),
                (Column::OptF64(v), Value::OptF64(x)) => v.push(x),
                (_, value) => panic!("{value:?} does not fit its {} column", self.table.name),
            }
        }
        self.len += 1;
    }

    /// Row `i`'s text in column `c`.
    pub fn str(&self, c: usize, i: usize) -> &str {
        match &self.columns[c] {
            Column::Str(s) => std::str::from_utf8(s.dict[s.ids[i] as usize].data())
                .expect("text columns hold UTF-8"),
            _ => panic!("column {c} is not text"),
        }
    }

    /// Row `i`'s integer in column `c`.
    pub fn i64(&self, c: usize, i: usize) -> i64 {
        match &self.columns[c] {
            Column::I64(v) => v[i],
            _ => panic!("column {c} is not an integer"),
        }
    }

    /// Row `i`'s double in column `c` (`None` for a null).
    pub fn f64(&self, c: usize, i: usize) -> Option<f64> {
        match &self.columns[c] {
            Column::F64(v) => Some(v[i]),
            Column::OptF64(v) => v[i],
            _ => panic!("column {c} is not a double"),
        }
    }

    /// The rows whose `keep` holds, in order.
    pub fn filter(&self, keep: impl Fn(&Rows, usize) -> bool) -> Rows {
        let mut out = self.table.rows();
        let mut row = Vec::with_capacity(self.columns.len());
        for i in 0..self.len {
            if !keep(self, i) {
                continue;
            }
            row.clear();
            row.extend(self.columns.iter().enumerate().map(|(c, col)| match col {
                Column::Str(_) => Value::Str(self.str(c, i)),
                Column::I64(v) => Value::I64(v[i]),
                Column::F64(v) => Value::F64(v[i]),
                Column::OptF64(v) => Value::OptF64(v[i]),
            }));
            out.push(&row);
        }
        out
    }

    /// Writes the rows as one row group of `writer`.
    fn write_group<W: std::io::Write + Send>(
        &self,
        writer: &mut SerializedFileWriter<W>,
    ) -> Result<()> {
        let mut group = writer.next_row_group().map_err(parquet_error)?;
        for column in &self.columns {
            let mut out = group
                .next_column()
                .map_err(parquet_error)?
                .expect("a writer per column");
            let written = match (out.untyped(), column) {
                (ColumnWriter::ByteArrayColumnWriter(w), Column::Str(s)) => {
                    let values: Vec<ByteArray> = s
                        .ids
                        .iter()
                        .map(|&id| s.dict[id as usize].clone())
                        .collect();
                    w.write_batch(&values, None, None)
                }
                (ColumnWriter::Int64ColumnWriter(w), Column::I64(v)) => {
                    w.write_batch(v, None, None)
                }
                (ColumnWriter::DoubleColumnWriter(w), Column::F64(v)) => {
                    w.write_batch(v, None, None)
                }
                (ColumnWriter::DoubleColumnWriter(w), Column::OptF64(v)) => {
                    let present: Vec<f64> = v.iter().flatten().copied().collect();
                    let levels: Vec<i16> = v.iter().map(|x| x.is_some() as i16).collect();
                    w.write_batch(&present, Some(&levels), None)
                }
                _ => unreachable!("the schema and the buffers come from one table definition"),
            };
            written.map_err(parquet_error)?;
            out.close().map_err(parquet_error)?;
        }
        group.close().map_err(parquet_error)?;
        Ok(())
    }
}

/// Writes row groups of one table to `out`.
pub(crate) struct TableWriter<W: std::io::Write + Send> {
    inner: SerializedFileWriter<W>,
}

impl<W: std::io::Write + Send> TableWriter<W> {
    /// A Parquet file of `table` (snappy-compressed, dictionary-encoded text) on `out`.
    pub fn new(table: &TableDef, out: W) -> Result<Self> {
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_created_by(format!("shardflow {}", env!("CARGO_PKG_VERSION")))
            .build();
        let inner = SerializedFileWriter::new(out, Arc::new(table.schema()), Arc::new(props))
            .map_err(parquet_error)?;
        Ok(TableWriter { inner })
    }

    /// Appends `rows` as a row group.
    pub fn write(&mut self, rows: &Rows) -> Result<()> {
        rows.write_group(&mut self.inner)
    }

    /// Writes the footer and hands back `out`.
    pub fn finish(self) -> Result<W> {
        self.inner.into_inner().map_err(parquet_error)
    }
}

/// `rows` as the bytes of a Parquet file of one row group.
pub(crate) fn to_parquet(rows: &Rows) -> Result<Vec<u8>> {
    let mut w = TableWriter::new(rows.table, Vec::new())?;
    w.write(rows)?;
    w.finish()
}

/// Calls `each` with every row group of the `table` file at `path`, in order.
///
/// # Errors
///
/// [`Error::Io`] when the file cannot be opened; [`Error::History`] naming the file when it is
/// not a Parquet file of this table.
pub(crate) fn read_groups(
    table: &'static TableDef,
    path: &Path,
    each: impl FnMut(Rows) -> Result<()>,
) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, "open", e))?;
    read_file_groups(table, path, file, each)
}

/// As [`read_groups`], on `file`, already open (it stays readable when `path` is renamed or
/// removed meanwhile).
///
/// # Errors
///
/// As [`read_groups`].
pub(crate) fn read_file_groups(
    table: &'static TableDef,
    path: &Path,
    file: std::fs::File,
    mut each: impl FnMut(Rows) -> Result<()>,
) -> Result<()> {
    let bad = |reason: String| Error::History {
        path: path.to_path_buf(),
        reason,
    };
    let reader = SerializedFileReader::new(file).map_err(|e| bad(e.to_string()))?;
    let schema = reader.metadata().file_metadata().schema_descr();
    let names: Vec<&str> = schema.columns().iter().map(|c| c.name()).collect();
    let want: Vec<&str> = table.columns.iter().map(|(n, _)| *n).collect();
    if names != want {
        return Err(bad(format!(
            "its columns are {names:?}, not the {} table's {want:?}",
            table.name
        )));
    }
    for g in 0..reader.num_row_groups() {
        let group = reader.get_row_group(g).map_err(|e| bad(e.to_string()))?;
        let n = group.metadata().num_rows() as usize;
        let mut rows = table.rows();
        for (c, (name, _)) in table.columns.iter().enumerate() {
            let reader = group
                .get_column_reader(c)
                .map_err(|e| bad(format!("column {name}: {e}")))?;
            read_column(reader, &mut rows.columns[c], n)
                .map_err(|e| bad(format!("column {name} of row group {g}: {e}")))?;
        }
        rows.len = n;
        each(rows)?;
    }
    Ok(())
}

/// Reads `n` values of one column chunk into `column`.
fn read_column(
    reader: ColumnReader,
    column: &mut Column,
    n: usize,
) -> std::result::Result<(), String> {
    let short = |got: usize| format!("{got} of {n} values");
    match (reader, column) {
        (ColumnReader::ByteArrayColumnReader(mut r), Column::Str(s)) => {
            let mut values = Vec::with_capacity(n);
            let (records, _, _) = r
                .read_records(n, None, None, &mut values)
                .map_err(|e| e.to_string())?;
            if records != n {
                return Err(short(records));
            }
            for v in values {
                let text = v.as_utf8().map_err(|e| e.to_string())?;
                let id = match s.index.get(text) {
                    Some(&id) => id,
                    None => {
                        let id = s.dict.len() as u32;
                        s.index.insert(text.to_string(), id);
                        s.bytes += text.len();
                        s.dict.push(v.clone());
                        id
                    }
                };
                s.ids.push(id);
            }
        }
        (ColumnReader::Int64ColumnReader(mut r), Column::I64(v)) => {
            let (records, _, _) = r
                .read_records(n, None, None, v)
                .map_err(|e| e.to_string())?;
            if records != n {
                return Err(short(records));
            }
        }
        (ColumnReader::DoubleColumnReader(mut r), Column::F64(v)) => {
            let (records, _, _) = r
                .read_records(n, None, None, v)
                .map_err(|e| e.to_string())?;
            if records != n {
                return Err(short(records));
            }
        }
        (ColumnReader::DoubleColumnReader(mut r), Column::OptF64(v)) => {
            let (mut present, mut levels) = (Vec::with_capacity(n), Vec::with_capacity(n));
            let (records, _, _) = r
                .read_records(n, Some(&mut levels), None, &mut present)
                .map_err(|e| e.to_string())?;
            if records != n || levels.len() != n {
                return Err(short(records));
            }
            let mut next = present.into_iter();
            for level in levels {
                v.push(if level > 0 { next.next() } else { None });
            }
        }
        _ => return Err("its physical type is not the table's".into()),
    }
    Ok(())
}

/// A Parquet error as [`Error::History`] (writing into memory or a checked file, so no path).
fn parquet_error(e: parquet::errors::ParquetError) -> Error {
    Error::History {
        path: std::path::PathBuf::new(),
        reason: e.to_string(),
    }
}
