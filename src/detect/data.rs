//! Feature CSVs into one matrix.
//!
//! The header is read generically: `source,window_start_ms,window_ms`, then one column per
//! feature (any names, in the extractor's order), with the optional `label` and `group`
//! columns found by name wherever they are (export writes them last, `label` first) and
//! never taken as features. Every feature value
//! must parse as a finite `f64`; the first bad field is reported with its line and column name,
//! so a broken export is found at once instead of poisoning a model with NaN.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ndarray::{Array2, ArrayView1};

use super::{first_difference, DetectError};

/// The label of normal traffic; every other label is an attack kind (the positive class).
pub const BENIGN: &str = "benign";

/// The fixed leading columns, in order.
pub const LEADING: [&str; 3] = ["source", "window_start_ms", "window_ms"];

/// The optional label column (`benign` or an attack kind), found by name.
pub const LABEL: &str = "label";

/// The optional group column (the behaviour family of a benign row, e.g. `typos`, or the
/// attack kind), found by name. Never a feature: it names where a row came from, for
/// per-group reports and leave-one-group-out runs.
pub const GROUP: &str = "group";

/// Strings that repeat across rows (sources, labels), stored once each.
#[derive(Debug, Clone, Default, PartialEq)]
struct Interner {
    names: Vec<String>,
    index: HashMap<String, u32>,
}

impl Interner {
    /// The id of `s`, adding it if new. Ids follow first appearance, so they are deterministic.
    fn id(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.names.len() as u32;
        self.names.push(s.to_owned());
        self.index.insert(s.to_owned(), i);
        i
    }
}

/// Feature rows read from one or more CSV files: a row-major `rows × features` matrix plus the
/// leading columns and the labels, if the files had a `label` column.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    features: Vec<String>,
    /// The file the rows came from (the first one, if several), for error messages.
    origin: PathBuf,
    values: Array2<f64>,
    sources: Interner,
    source_ids: Vec<u32>,
    window_start_ms: Vec<i64>,
    window_ms: Vec<u64>,
    labels: Interner,
    /// `None` when no input file had a `label` column.
    label_ids: Option<Vec<u32>>,
    groups: Interner,
    /// `None` when no input file had a `group` column.
    group_ids: Option<Vec<u32>>,
}

/// One row to build a [`Dataset`] from in memory (tests, benches, synthetic data).
#[derive(Debug, Clone, PartialEq)]
pub struct RowSpec<'a> {
    /// Source text, e.g. `127.0.1.5`.
    pub source: &'a str,
    /// Window start in ms since the epoch.
    pub window_start_ms: i64,
    /// Window length in ms.
    pub window_ms: u64,
    /// One value per feature.
    pub values: &'a [f64],
    /// `benign` or an attack kind; `None` when the data is unlabelled.
    pub label: Option<&'a str>,
}

impl Dataset {
    /// An empty dataset with these feature names; `labelled` says whether it carries labels.
    pub fn new(features: Vec<String>, labelled: bool) -> Dataset {
        let d = features.len();
        Dataset {
            features,
            origin: PathBuf::from("<memory>"),
            values: Array2::zeros((0, d)),
            sources: Interner::default(),
            source_ids: Vec::new(),
            window_start_ms: Vec::new(),
            window_ms: Vec::new(),
            labels: Interner::default(),
            label_ids: labelled.then(Vec::new),
            groups: Interner::default(),
            group_ids: None,
        }
    }

    /// Builds a dataset from rows. Values must be finite and `values.len()` must equal the
    /// number of features; rows without a label in a labelled dataset count as benign.
    pub fn from_rows<'a>(
        features: Vec<String>,
        labelled: bool,
        rows: impl IntoIterator<Item = RowSpec<'a>>,
    ) -> Result<Dataset, DetectError> {
        let mut ds = Dataset::new(features, labelled);
        let d = ds.features.len();
        let mut flat = Vec::new();
        for (i, r) in rows.into_iter().enumerate() {
            let line = i as u64 + 2;
            if r.values.len() != d {
                return Err(DetectError::BadModel(format!(
                    "row {} has {} values for {d} features",
                    i + 1,
                    r.values.len()
                )));
            }
            for (j, &v) in r.values.iter().enumerate() {
                if !v.is_finite() {
                    return Err(DetectError::NotFinite {
                        path: ds.origin.clone(),
                        line,
                        column: ds.features[j].clone(),
                        value: v.to_string(),
                    });
                }
            }
            flat.extend_from_slice(r.values);
            ds.push_meta(r.source, r.window_start_ms, r.window_ms, r.label);
        }
        ds.values = matrix(flat, d)?;
        Ok(ds)
    }

    fn push_meta(&mut self, source: &str, start: i64, window: u64, label: Option<&str>) {
        let s = self.sources.id(source);
        self.source_ids.push(s);
        self.window_start_ms.push(start);
        self.window_ms.push(window);
        if let Some(ids) = self.label_ids.as_mut() {
            let l = self.labels.id(label.unwrap_or(BENIGN));
            ids.push(l);
        }
    }

    /// Feature names, in column order.
    pub fn features(&self) -> &[String] {
        &self.features
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.values.nrows()
    }

    /// The `rows × features` matrix (standard, row-major layout).
    pub fn values(&self) -> &Array2<f64> {
        &self.values
    }

    /// Row `i`'s feature values.
    pub fn row(&self, i: usize) -> ArrayView1<'_, f64> {
        self.values.row(i)
    }

    /// Row `i`'s source text.
    pub fn source(&self, i: usize) -> &str {
        &self.sources.names[self.source_ids[i] as usize]
    }

    /// Row `i`'s window start (ms since the epoch).
    pub fn window_start_ms(&self, i: usize) -> i64 {
        self.window_start_ms[i]
    }

    /// Row `i`'s window length in ms.
    pub fn window_ms(&self, i: usize) -> u64 {
        self.window_ms[i]
    }

    /// Whether the data has a `label` column.
    pub fn is_labelled(&self) -> bool {
        self.label_ids.is_some()
    }

    /// Row `i`'s label, or `None` for unlabelled data.
    pub fn label(&self, i: usize) -> Option<&str> {
        self.label_ids
            .as_ref()
            .map(|ids| self.labels.names[ids[i] as usize].as_str())
    }

    /// Whether row `i` is normal traffic (always true for unlabelled data).
    pub fn is_benign(&self, i: usize) -> bool {
        !matches!(self.label(i), Some(l) if l != BENIGN)
    }

    /// Row `i`'s group, or `None` when the data has no `group` column.
    pub fn group(&self, i: usize) -> Option<&str> {
        self.group_ids
            .as_ref()
            .map(|ids| self.groups.names[ids[i] as usize].as_str())
    }

    /// Whether the data has a `group` column.
    pub fn has_groups(&self) -> bool {
        self.group_ids.is_some()
    }

    /// The rows whose `keep(i)` is true, in order (e.g. all but one group).
    pub fn filter_rows(&self, keep: impl Fn(usize) -> bool) -> Result<Dataset, DetectError> {
        let mut out = Dataset::new(self.features.clone(), self.is_labelled());
        out.origin = self.origin.clone();
        if self.has_groups() {
            out.group_ids = Some(Vec::new());
        }
        let mut flat = Vec::new();
        for i in (0..self.rows()).filter(|&i| keep(i)) {
            flat.extend(self.values.row(i).iter());
            out.push_meta(
                self.source(i),
                self.window_start_ms(i),
                self.window_ms(i),
                self.label(i),
            );
            if let (Some(ids), Some(g)) = (out.group_ids.as_mut(), self.group(i)) {
                ids.push(out.groups.id(g));
            }
        }
        out.values = matrix(flat, self.features.len())?;
        Ok(out)
    }

    /// Distinct labels, in order of first appearance.
    pub fn label_names(&self) -> &[String] {
        &self.labels.names
    }

    /// The position of the feature called `name`.
    pub fn feature_index(&self, name: &str) -> Option<usize> {
        self.features.iter().position(|f| f == name)
    }

    /// The file the rows came from (the first one, if several).
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// Fails with [`DetectError::SchemaMismatch`] naming the first differing column if the
    /// data's features are not exactly `expected`, in order. `what` names the other side
    /// ("the model").
    pub fn check_features(&self, expected: &[String], what: &str) -> Result<(), DetectError> {
        match first_difference(expected, &self.features) {
            None => Ok(()),
            Some((position, expected, found)) => Err(DetectError::SchemaMismatch {
                path: self.origin.clone(),
                what: what.to_owned(),
                position,
                expected,
                found,
            }),
        }
    }

    /// Appends another dataset's rows; its features must be the same, in the same order.
    /// Unlabelled rows joining labelled ones count as benign.
    pub fn append(&mut self, other: Dataset) -> Result<(), DetectError> {
        other.check_features(&self.features, &self.origin.display().to_string())?;
        if other.is_labelled() && !self.is_labelled() {
            self.label_ids = Some(vec![self.labels.id(BENIGN); self.rows()]);
        }
        // Rows of a file without groups join grouped ones with an empty group.
        if other.has_groups() && !self.has_groups() {
            self.group_ids = Some(vec![self.groups.id(""); self.rows()]);
        }
        let d = self.features.len();
        let mut flat = std::mem::take(&mut self.values).into_raw_vec();
        flat.extend(other.values.iter());
        self.values = matrix(flat, d)?;
        for i in 0..other.rows() {
            self.push_meta(
                other.source(i),
                other.window_start_ms(i),
                other.window_ms(i),
                other.label(i),
            );
            if let Some(ids) = self.group_ids.as_mut() {
                ids.push(self.groups.id(other.group(i).unwrap_or("")));
            }
        }
        Ok(())
    }

    /// Writes the rows as CSV in the export's format (`label` last if labelled).
    pub fn write_csv(&self, path: &Path) -> Result<(), DetectError> {
        let csv_err = |source| DetectError::Csv {
            path: path.to_owned(),
            source,
        };
        let mut w = csv::Writer::from_path(path).map_err(csv_err)?;
        let mut header: Vec<&str> = LEADING.to_vec();
        header.extend(self.features.iter().map(String::as_str));
        if self.is_labelled() {
            header.push(LABEL);
        }
        if self.has_groups() {
            header.push(GROUP);
        }
        w.write_record(&header).map_err(csv_err)?;
        let mut rec: Vec<String> = Vec::with_capacity(header.len());
        for i in 0..self.rows() {
            rec.clear();
            rec.push(self.source(i).to_owned());
            rec.push(self.window_start_ms(i).to_string());
            rec.push(self.window_ms(i).to_string());
            rec.extend(self.values.row(i).iter().map(|v| v.to_string()));
            if let Some(l) = self.label(i) {
                rec.push(l.to_owned());
            }
            if let Some(g) = self.group(i) {
                rec.push(g.to_owned());
            }
            w.write_record(&rec).map_err(csv_err)?;
        }
        w.flush().map_err(|source| DetectError::Io {
            path: path.to_owned(),
            source,
        })
    }
}

/// A `rows × d` matrix from row-major values.
fn matrix(flat: Vec<f64>, d: usize) -> Result<Array2<f64>, DetectError> {
    let n = flat.len().checked_div(d).unwrap_or(0);
    Array2::from_shape_vec((n, d), flat)
        .map_err(|e| DetectError::BadModel(format!("inconsistent matrix shape: {e}")))
}

/// Reads one feature CSV. See the module docs for the format.
pub fn read_csv(path: &Path) -> Result<Dataset, DetectError> {
    let file = std::fs::File::open(path).map_err(|source| DetectError::Io {
        path: path.to_owned(),
        source,
    })?;
    read_from(std::io::BufReader::with_capacity(1 << 20, file), path)
}

/// Reads several feature CSVs with the same feature columns into one dataset, in order.
pub fn read_csvs<P: AsRef<Path>>(paths: &[P]) -> Result<Dataset, DetectError> {
    let mut it = paths.iter();
    let Some(first) = it.next() else {
        return Err(DetectError::NotEnoughRows {
            what: "reading data".into(),
            needed: 1,
            have: 0,
        });
    };
    let mut ds = read_csv(first.as_ref())?;
    for p in it {
        ds.append(read_csv(p.as_ref())?)?;
    }
    Ok(ds)
}

/// Reads a feature CSV from any reader; `path` only names it in errors.
pub fn read_from(reader: impl std::io::Read, path: &Path) -> Result<Dataset, DetectError> {
    let csv_err = |source| DetectError::Csv {
        path: path.to_owned(),
        source,
    };
    let mut r = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_reader(reader);
    let header: Vec<String> = r
        .headers()
        .map_err(csv_err)?
        .iter()
        .map(str::to_owned)
        .collect();
    for (i, want) in LEADING.iter().enumerate() {
        let found = header.get(i).map(String::as_str).unwrap_or("");
        if found != *want {
            return Err(DetectError::MissingColumn {
                path: path.to_owned(),
                position: i + 1,
                expected: want,
                found: found.to_owned(),
            });
        }
    }
    // `label` and `group` are found by name, after the leading columns; every other
    // column is a feature, in file order.
    let label_col = header
        .iter()
        .skip(LEADING.len())
        .position(|h| h == LABEL)
        .map(|p| p + LEADING.len());
    let group_col = header
        .iter()
        .skip(LEADING.len())
        .position(|h| h == GROUP)
        .map(|p| p + LEADING.len());
    let labelled = label_col.is_some();
    let feature_cols: Vec<usize> = (LEADING.len()..header.len())
        .filter(|&c| Some(c) != label_col && Some(c) != group_col)
        .collect();
    let features: Vec<String> = feature_cols.iter().map(|&c| header[c].clone()).collect();
    if features.is_empty() {
        return Err(DetectError::NoFeatures {
            path: path.to_owned(),
        });
    }
    // A second `label` or `group` column would otherwise be read as a feature of that name.
    let mut seen = std::collections::HashSet::new();
    for f in features.iter().chain(
        [label_col, group_col]
            .into_iter()
            .flatten()
            .map(|c| &header[c]),
    ) {
        if !seen.insert(f.as_str()) {
            return Err(DetectError::DuplicateColumn {
                path: path.to_owned(),
                column: f.clone(),
            });
        }
    }
    let d = features.len();
    let mut ds = Dataset::new(features, labelled);
    ds.origin = path.to_owned();
    if group_col.is_some() {
        ds.group_ids = Some(Vec::new());
    }
    let mut flat: Vec<f64> = Vec::new();
    let mut rec = csv::ByteRecord::new();
    loop {
        match r.read_byte_record(&mut rec) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return Err(csv_err(e)),
        }
        let line = rec.position().map_or(0, |p| p.line());
        let field = |i: usize| -> &str {
            // The csv reader already checked the field count; invalid UTF-8 is reported as
            // a non-number below.
            std::str::from_utf8(rec.get(i).unwrap_or(b"")).unwrap_or("\u{fffd}")
        };
        let bad = |i: usize, expected: &'static str| DetectError::NotANumber {
            path: path.to_owned(),
            line,
            column: header[i].clone(),
            value: field(i).to_owned(),
            expected,
        };
        let source = field(0);
        let start: i64 = field(1).parse().map_err(|_| bad(1, "an integer"))?;
        let window: u64 = field(2).parse().map_err(|_| bad(2, "an integer"))?;
        for &col in &feature_cols {
            let text = field(col);
            let v: f64 = text.parse().map_err(|_| bad(col, "a number"))?;
            if !v.is_finite() {
                return Err(DetectError::NotFinite {
                    path: path.to_owned(),
                    line,
                    column: header[col].clone(),
                    value: text.to_owned(),
                });
            }
            flat.push(v);
        }
        let label = if let Some(end) = label_col {
            let l = field(end);
            if l.is_empty() {
                return Err(DetectError::EmptyLabel {
                    path: path.to_owned(),
                    line,
                });
            }
            Some(l)
        } else {
            None
        };
        let source = source.to_owned();
        let label = label.map(str::to_owned);
        let group = group_col.map(|c| field(c).to_owned());
        ds.push_meta(&source, start, window, label.as_deref());
        if let (Some(ids), Some(g)) = (ds.group_ids.as_mut(), group) {
            ids.push(ds.groups.id(&g));
        }
    }
    ds.values = matrix(flat, d)?;
    Ok(ds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Dataset, DetectError> {
        read_from(text.as_bytes(), Path::new("t.csv"))
    }

    #[test]
    fn reads_a_labelled_csv() -> Result<(), DetectError> {
        let ds = read(
            "source,window_start_ms,window_ms,a,b,label\n\
             127.0.0.1,1000,1000,1,2.5,benign\n\
             127.0.1.9,1000,1000,300,0,raw-flood\n",
        )?;
        assert_eq!(ds.features(), ["a", "b"]);
        assert_eq!(ds.rows(), 2);
        assert_eq!(ds.row(1).to_vec(), vec![300.0, 0.0]);
        assert_eq!(ds.label(1), Some("raw-flood"));
        assert!(ds.is_benign(0) && !ds.is_benign(1));
        assert_eq!(ds.source(1), "127.0.1.9");
        assert_eq!(ds.window_ms(0), 1000);
        Ok(())
    }

    #[test]
    fn label_and_group_are_found_by_name_and_are_not_features() -> Result<(), DetectError> {
        let with = read(
            "source,window_start_ms,window_ms,a,b,label,group\n\
             127.0.0.1,1000,1000,1,2.5,benign,typos\n\
             127.0.1.9,1000,1000,300,0,raw-flood,raw-flood\n",
        )?;
        assert_eq!(with.features(), ["a", "b"]);
        assert_eq!(with.label(1), Some("raw-flood"));
        assert_eq!(with.group(0), Some("typos"));
        assert_eq!(with.row(1).to_vec(), vec![300.0, 0.0]);
        let without = read(
            "source,window_start_ms,window_ms,a,b,label\n\
             127.0.0.1,1000,1000,1,2.5,benign\n",
        )?;
        assert_eq!(without.features(), with.features());
        assert!(!without.has_groups() && with.has_groups());
        // Anywhere after the leading columns.
        let moved = read(
            "source,window_start_ms,window_ms,group,a,label,b\n127.0.0.1,0,1000,nat,1,benign,2\n",
        )?;
        assert_eq!(moved.features(), ["a", "b"]);
        assert_eq!(moved.row(0).to_vec(), vec![1.0, 2.0]);
        assert_eq!(
            (moved.label(0), moved.group(0)),
            (Some("benign"), Some("nat"))
        );
        let kept = with.filter_rows(|i| with.group(i) != Some("typos"))?;
        assert_eq!(kept.rows(), 1);
        assert_eq!(kept.group(0), Some("raw-flood"));
        Ok(())
    }

    #[test]
    fn without_a_label_column_every_row_is_benign() -> Result<(), DetectError> {
        let ds = read("source,window_start_ms,window_ms,a\n127.0.0.1,0,1000,1\n")?;
        assert!(!ds.is_labelled());
        assert!(ds.is_benign(0));
        Ok(())
    }

    #[test]
    fn nan_is_refused_with_line_and_column() {
        let err = read(
            "source,window_start_ms,window_ms,a,b,label\n\
             127.0.0.1,0,1000,1,2,benign\n\
             127.0.0.1,1000,1000,1,NaN,benign\n",
        );
        match err {
            Err(DetectError::NotFinite { line, column, .. }) => {
                assert_eq!((line, column.as_str()), (3, "b"));
            }
            other => panic!("expected NotFinite, got {other:?}"),
        }
    }

    #[test]
    fn non_numeric_is_refused_with_line_and_column() {
        let err = read("source,window_start_ms,window_ms,a,b\n127.0.0.1,0,1000,x1,2\n");
        let Err(e) = err else {
            panic!("accepted a non-number")
        };
        assert!(
            matches!(&e, DetectError::NotANumber { line: 2, column, .. } if column == "a"),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "t.csv: line 2, column `a`: `x1` is not a number"
        );
    }

    #[test]
    fn a_bad_header_names_the_column() {
        let err = read("src,window_start_ms,window_ms,a\n");
        assert!(matches!(
            err,
            Err(DetectError::MissingColumn {
                position: 1,
                expected: "source",
                ..
            })
        ));
        assert!(matches!(
            read("source,window_start_ms,window_ms,label\n"),
            Err(DetectError::NoFeatures { .. })
        ));
        assert!(matches!(
            read("source,window_start_ms,window_ms,a,a\n"),
            Err(DetectError::DuplicateColumn { .. })
        ));
        // A second label or group column is no feature: it is refused, not read as one.
        for header in ["a,label,b,label", "a,group,label,group"] {
            assert!(
                matches!(
                    read(&format!("source,window_start_ms,window_ms,{header}\n")),
                    Err(DetectError::DuplicateColumn { .. })
                ),
                "{header}"
            );
        }
    }

    #[test]
    fn files_with_other_features_are_refused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let a = dir.path().join("a.csv");
        let b = dir.path().join("b.csv");
        std::fs::write(
            &a,
            "source,window_start_ms,window_ms,x,y\n127.0.0.1,0,1,1,2\n",
        )?;
        std::fs::write(
            &b,
            "source,window_start_ms,window_ms,x,z\n127.0.0.1,0,1,1,2\n",
        )?;
        match read_csvs(&[&a, &b]) {
            Err(DetectError::SchemaMismatch {
                position,
                expected,
                found,
                ..
            }) => {
                assert_eq!(position, 2);
                assert_eq!(expected.as_deref(), Some("y"));
                assert_eq!(found.as_deref(), Some("z"));
            }
            other => panic!("expected SchemaMismatch, got {other:?}"),
        }
        Ok(())
    }

    #[test]
    fn write_then_read_round_trips() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("d.csv");
        let ds = Dataset::from_rows(
            vec!["a".into(), "b".into()],
            true,
            [
                RowSpec {
                    source: "127.0.0.1",
                    window_start_ms: 0,
                    window_ms: 1000,
                    values: &[0.1, 1e9],
                    label: Some(BENIGN),
                },
                RowSpec {
                    source: "2001:db8::/64",
                    window_start_ms: 1000,
                    window_ms: 1000,
                    values: &[1.0 / 3.0, 0.0],
                    label: Some("slowloris"),
                },
            ],
        )?;
        ds.write_csv(&p)?;
        let back = read_csv(&p)?;
        assert_eq!(back.values(), ds.values());
        assert_eq!(back.label(1), Some("slowloris"));
        assert_eq!(back.source(1), "2001:db8::/64");
        Ok(())
    }
}
