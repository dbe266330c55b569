//! `rampart activity export`: the events of an activity database, streamed through the same
//! [`Extractor`] the live detector runs, written as one CSV row per (source, window) with a
//! `label` column; and `rampart activity stats`: what the database holds.
//!
//! CSV header: `source,window_start_ms,window_ms,<FEATURES...>,label,group`. `label` is the
//! source's label from the `labels` table (the attack kind a scenario ran from it), or
//! `benign`. `group` is its behaviour family from the `groups` table (the `[[legit]] name`s
//! of the users behind a legit source, joined with `+`), or else its label: a reader that
//! trains on `label` must find `group` by name and leave it out of the features.
//! A labelled source with a start of attack (`since_ms`, set by the scenario runner for the
//! kinds that behave like a user first) exports its windows that end by then as `benign`,
//! in the group `KIND-before` (e.g. `tamper-before`): what they show is a user's login.
//! The file is written to a temporary file next to `out` and renamed into place only when
//! complete, so a failed export never leaves a truncated CSV behind.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufWriter;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;
use serde::Serialize;

use super::db::{self, ActivityError};
use super::features::{Extractor, ExtractorStats, FeatureRow, FEATURES};
use super::EventName;
use crate::guard::SourceKey;

/// The columns before the features.
pub const KEY_COLUMNS: [&str; 3] = ["source", "window_start_ms", "window_ms"];

/// The column after the features: `benign` or the attack kind.
pub const LABEL_COLUMN: &str = "label";

/// The last column: the source's behaviour family (see the module docs).
pub const GROUP_COLUMN: &str = "group";

/// The label of a source that the labels table does not name.
pub const BENIGN: &str = "benign";

/// Sources the offline extractor tracks at once: far more than any recording holds within
/// the forgetting time, so an export never evicts in practice (and reports it if it does).
pub const EXPORT_MAX_SOURCES: usize = 1_000_000;

/// Every event name, in [`EventKind`](super::EventKind) declaration order
/// ([`EventName::NAMES`]).
pub const EVENT_NAMES: [&str; EventName::ALL.len()] = EventName::NAMES;

/// The CSV header: [`KEY_COLUMNS`], [`FEATURES`], [`LABEL_COLUMN`], [`GROUP_COLUMN`].
pub fn csv_header() -> Vec<&'static str> {
    KEY_COLUMNS
        .iter()
        .chain(FEATURES)
        .chain([&LABEL_COLUMN, &GROUP_COLUMN])
        .copied()
        .collect()
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportSummary {
    /// The CSV file.
    pub out: PathBuf,
    /// Events read from the database.
    pub events: u64,
    /// Rows written (not counting the header).
    pub rows: u64,
    /// Distinct sources among the rows.
    pub sources: u64,
    /// Window length in milliseconds.
    pub window_ms: u64,
    /// Rows per label.
    pub rows_by_label: BTreeMap<String, u64>,
    /// What the extractor did (late events, evictions).
    pub extractor: ExtractorStats,
}

/// Why an export or a stats query failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The data directory holds no activity database.
    #[error(
        "no activity database at {}: record first (rampart serve or rampart scenario run --record DIR)",
        .path.display()
    )]
    NoActivity {
        /// The missing file.
        path: PathBuf,
    },
    /// Reading the database failed.
    #[error(transparent)]
    Activity(#[from] ActivityError),
    /// A label names something that is not an address or a source.
    #[error("the labels table names {address:?}, which is not an ip address or a source network")]
    BadLabel {
        /// The stored text.
        address: String,
    },
    /// Writing the CSV failed.
    #[error("cannot write {}: {source}", .path.display())]
    Csv {
        /// The file.
        path: PathBuf,
        /// Why.
        source: csv::Error,
    },
    /// Reading the fleet's shared windows failed (`activity export --store-url`).
    #[error("cannot read the fleet's windows: {0}")]
    Fleet(String),
    /// Creating or renaming the output file failed.
    #[error("cannot write {}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Opens the activity database of `data_dir`, refusing to create one where none exists.
fn open_existing(data_dir: &Path) -> Result<Connection, ExportError> {
    let path = db::path(data_dir);
    if !path.is_file() {
        return Err(ExportError::NoActivity { path });
    }
    Ok(db::open(data_dir)?)
}

/// Labels by source, as the extractor keys them. When several labelled addresses fall into
/// one IPv6 source, the first in address-text order wins.
fn load_labels(
    conn: &Connection,
    ipv6_prefix: u8,
) -> Result<BTreeMap<SourceKey, String>, ExportError> {
    by_source(db::labels(conn)?, ipv6_prefix)
}

/// Starts of attack by source, keyed like [`load_labels`].
fn load_since(conn: &Connection, ipv6_prefix: u8) -> Result<BTreeMap<SourceKey, i64>, ExportError> {
    by_source(db::label_since(conn)?, ipv6_prefix)
}

/// Groups by source, keyed like [`load_labels`].
fn load_groups(
    conn: &Connection,
    ipv6_prefix: u8,
) -> Result<BTreeMap<SourceKey, String>, ExportError> {
    by_source(db::groups(conn)?, ipv6_prefix)
}

/// (address text, value) rows keyed by source; the first row of a source wins.
fn by_source<V>(
    rows: Vec<(String, V)>,
    ipv6_prefix: u8,
) -> Result<BTreeMap<SourceKey, V>, ExportError> {
    let mut labels = BTreeMap::new();
    for (text, label) in rows {
        let key = match text.parse::<IpAddr>() {
            Ok(ip) => SourceKey::from_ip(ip, ipv6_prefix),
            Err(_) => text
                .parse::<SourceKey>()
                .map_err(|_| ExportError::BadLabel {
                    address: text.clone(),
                })?,
        };
        labels.entry(key).or_insert(label);
    }
    Ok(labels)
}

/// Writes rows with their labels and keeps the summary's counts.
struct RowWriter<W: std::io::Write> {
    csv: csv::Writer<W>,
    labels: BTreeMap<SourceKey, String>,
    since: BTreeMap<SourceKey, i64>,
    groups: BTreeMap<SourceKey, String>,
    path: PathBuf,
    rows: u64,
    sources: BTreeSet<SourceKey>,
    rows_by_label: BTreeMap<String, u64>,
    fields: Vec<String>,
}

impl<W: std::io::Write> RowWriter<W> {
    fn err(&self, source: csv::Error) -> ExportError {
        ExportError::Csv {
            path: self.path.clone(),
            source,
        }
    }

    fn header(&mut self) -> Result<(), ExportError> {
        self.csv.write_record(csv_header()).map_err(|e| self.err(e))
    }

    fn write(&mut self, rows: &[FeatureRow]) -> Result<(), ExportError> {
        for row in rows {
            let mut label = self.labels.get(&row.source).map_or(BENIGN, String::as_str);
            let mut before = None;
            if let Some(&since) = self.since.get(&row.source) {
                let end = row
                    .window_start_ms
                    .saturating_add(i64::try_from(row.window_ms).unwrap_or(i64::MAX));
                if end <= since {
                    before = Some(format!("{label}-before"));
                    label = BENIGN;
                }
            }
            self.fields.clear();
            self.fields.push(row.source.to_string());
            self.fields.push(row.window_start_ms.to_string());
            self.fields.push(row.window_ms.to_string());
            // `Display` for f64 prints the shortest text that parses back to the same value.
            self.fields.extend(row.values.iter().map(f64::to_string));
            self.fields.push(label.to_owned());
            let group = match &before {
                Some(g) => g.as_str(),
                None => self.groups.get(&row.source).map_or(label, String::as_str),
            };
            self.fields.push(group.to_owned());
            if let Err(e) = self.csv.write_record(&self.fields) {
                return Err(self.err(e));
            }
            self.rows += 1;
            self.sources.insert(row.source);
            *self.rows_by_label.entry(label.to_owned()).or_insert(0) += 1;
        }
        Ok(())
    }
}

/// Feeds every recorded event of `conn` to `extractor` in time order and hands `emit` each
/// batch of windows as it closes, the last ones once the events end; returns how many events
/// were read. Events come in time order, so closing each window as the first event past its
/// end arrives loses nothing, and keeps memory to the sources of one window. Used by the
/// export and by training on a recording (`detect::recorded`), so both see the same rows.
pub fn replay(
    conn: &Connection,
    extractor: &mut Extractor,
    mut emit: impl FnMut(Vec<FeatureRow>),
) -> Result<u64, ActivityError> {
    let window_ms = i64::try_from(extractor.window().as_millis())
        .unwrap_or(i64::MAX)
        .max(1);
    let mut next_close = i64::MIN;
    let events = db::for_each_event(conn, |e| {
        if e.t_ms >= next_close {
            emit(extractor.close_until(e.t_ms));
            next_close = e
                .t_ms
                .div_euclid(window_ms)
                .saturating_add(1)
                .saturating_mul(window_ms);
        }
        extractor.push(&e);
    })?;
    emit(extractor.finish());
    Ok(events)
}

/// Streams every event of `data_dir`'s activity database through an [`Extractor`] with
/// windows of `window` and writes the rows to `out` as CSV (header [`csv_header`]).
pub fn export_csv(
    data_dir: &Path,
    out: &Path,
    window: Duration,
) -> Result<ExportSummary, ExportError> {
    let conn = open_existing(data_dir)?;
    let mut extractor = Extractor::new(window, EXPORT_MAX_SOURCES);
    let prefix = extractor.ipv6_prefix();
    let names = Names {
        labels: load_labels(&conn, prefix)?,
        since: load_since(&conn, prefix)?,
        groups: load_groups(&conn, prefix)?,
    };
    let mut summary = write_csv(out, names, |emit| {
        let mut failed: Option<ExportError> = None;
        let events = replay(&conn, &mut extractor, |rows| {
            if failed.is_none() {
                if let Err(err) = emit(&rows) {
                    failed = Some(err);
                }
            }
        })?;
        failed.map_or(Ok(events), Err)
    })?;
    summary.window_ms = u64::try_from(extractor.window().as_millis()).unwrap_or(u64::MAX);
    summary.extractor = extractor.stats();
    Ok(summary)
}

/// Writes rows made elsewhere (the fleet's shared windows, `fleet::export_windows`) to `out`
/// as the same CSV [`export_csv`] writes, every source `benign` in the group `benign`:
/// `produce` hands each batch of rows, in order, to the callback it is given and returns how
/// many records it read (the summary's `events`). `window` is the rows' window length.
pub fn export_rows(
    out: &Path,
    window: Duration,
    produce: impl FnOnce(
        &mut dyn FnMut(&[FeatureRow]) -> Result<(), ExportError>,
    ) -> Result<u64, ExportError>,
) -> Result<ExportSummary, ExportError> {
    let names = Names {
        labels: BTreeMap::new(),
        since: BTreeMap::new(),
        groups: BTreeMap::new(),
    };
    let mut summary = write_csv(out, names, produce)?;
    summary.window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
    Ok(summary)
}

/// Labels, starts of attack and groups by source.
struct Names {
    labels: BTreeMap<SourceKey, String>,
    since: BTreeMap<SourceKey, i64>,
    groups: BTreeMap<SourceKey, String>,
}

/// Writes the header and every batch `produce` hands over to a temporary file next to `out`,
/// renamed into place only once complete. The summary's window and extractor fields are
/// left for the caller.
fn write_csv(
    out: &Path,
    names: Names,
    produce: impl FnOnce(
        &mut dyn FnMut(&[FeatureRow]) -> Result<(), ExportError>,
    ) -> Result<u64, ExportError>,
) -> Result<ExportSummary, ExportError> {
    let io_err = |source| ExportError::Io {
        path: out.to_path_buf(),
        source,
    };
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_err)?;
    let (events, rows, sources, rows_by_label) = {
        let mut writer = RowWriter {
            csv: csv::Writer::from_writer(BufWriter::new(tmp.as_file())),
            labels: names.labels,
            since: names.since,
            groups: names.groups,
            path: out.to_path_buf(),
            rows: 0,
            sources: BTreeSet::new(),
            rows_by_label: BTreeMap::new(),
            fields: Vec::with_capacity(FEATURES.len() + KEY_COLUMNS.len() + 2),
        };
        writer.header()?;
        let events = produce(&mut |rows| writer.write(rows))?;
        writer.csv.flush().map_err(io_err)?;
        (
            events,
            writer.rows,
            writer.sources.len(),
            writer.rows_by_label,
        )
    };
    tmp.persist(out).map_err(|e| io_err(e.error))?;
    Ok(ExportSummary {
        out: out.to_path_buf(),
        events,
        rows,
        sources: sources as u64,
        window_ms: 0,
        rows_by_label,
        extractor: ExtractorStats::default(),
    })
}

/// What an activity database holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActivityStats {
    /// Events stored.
    pub events: u64,
    /// Events by name; every name in [`EVENT_NAMES`] is present, zeros included.
    pub by_event: BTreeMap<String, u64>,
    /// Distinct source addresses.
    pub sources: u64,
    /// Time of the first event, in milliseconds since the Unix epoch.
    pub first_ms: Option<i64>,
    /// Time of the last event.
    pub last_ms: Option<i64>,
    /// Labelled sources per label.
    pub labels: BTreeMap<String, u64>,
}

/// Counts the events of `data_dir`'s activity database by name (one pass over the events).
pub fn stats(data_dir: &Path) -> Result<ActivityStats, ExportError> {
    let conn = open_existing(data_dir)?;
    let mut counts = [0u64; EVENT_NAMES.len()];
    let mut sources = BTreeSet::new();
    let mut first_ms: Option<i64> = None;
    let mut last_ms: Option<i64> = None;
    let events = db::for_each_event(&conn, |e| {
        if let Some(c) = counts.get_mut(e.kind.event_name() as usize) {
            *c += 1;
        }
        sources.insert(e.ip);
        first_ms = Some(first_ms.map_or(e.t_ms, |f| f.min(e.t_ms)));
        last_ms = Some(last_ms.map_or(e.t_ms, |l| l.max(e.t_ms)));
    })?;
    let mut labels = BTreeMap::new();
    for (_, label) in db::labels(&conn)? {
        *labels.entry(label).or_insert(0) += 1;
    }
    Ok(ActivityStats {
        events,
        by_event: EVENT_NAMES
            .iter()
            .zip(counts)
            .map(|(n, c)| ((*n).to_owned(), c))
            .collect(),
        sources: sources.len() as u64,
        first_ms,
        last_ms,
        labels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activity::features::parse_window;
    use crate::activity::{Event, EventKind};
    use crate::protocol::Kind;
    use std::net::Ipv4Addr;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const T0: i64 = 1_700_000_000_000;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 1, last))
    }

    fn ev(t: i64, conn: u64, host: u8, kind: EventKind) -> Event {
        Event {
            t_ms: T0 + t,
            conn,
            ip: ip(host),
            kind,
        }
    }

    /// A legit-looking session from .1 over two windows and a flood from .2.
    fn sample() -> Vec<Event> {
        let mut events = vec![
            ev(0, 1, 1, EventKind::Accept),
            ev(
                5,
                1,
                1,
                EventKind::FrameIn {
                    kind: Kind::Auth as u8,
                    size: 20,
                    assemble_ms: 0,
                },
            ),
            ev(6, 1, 1, EventKind::AuthOk { forgiven: 0 }),
            ev(
                6,
                1,
                1,
                EventKind::FrameOut {
                    kind: Kind::AuthOk as u8,
                    size: 6,
                },
            ),
            ev(10, 2, 2, EventKind::Accept),
        ];
        for i in 0..50 {
            events.push(ev(
                20 + i,
                2,
                2,
                EventKind::FrameIn {
                    kind: Kind::Ping as u8,
                    size: 0,
                    assemble_ms: 0,
                },
            ));
        }
        events.push(ev(
            80,
            2,
            2,
            EventKind::RateLimited {
                reason: "frame_rate_ip",
            },
        ));
        events.push(ev(
            1200,
            1,
            1,
            EventKind::FrameIn {
                kind: Kind::SendMessage as u8,
                size: 300,
                assemble_ms: 1,
            },
        ));
        events.push(ev(
            1201,
            1,
            1,
            EventKind::Close {
                reason: "eof",
                unread_bytes: 0,
            },
        ));
        events.push(ev(
            1300,
            2,
            2,
            EventKind::Close {
                reason: "strikes",
                unread_bytes: 100,
            },
        ));
        events
    }

    fn record(dir: &Path, events: &[Event], labels: &[(IpAddr, String)]) -> TestResult {
        let mut conn = db::open(dir)?;
        db::insert(&mut conn, events)?;
        db::set_labels(&mut conn, labels)?;
        Ok(())
    }

    #[test]
    fn export_writes_the_header_rows_and_labels() -> TestResult {
        let dir = tempfile::tempdir()?;
        let events = sample();
        record(dir.path(), &events, &[(ip(2), "flood".to_string())])?;
        let out = dir.path().join("train.csv");
        let summary = export_csv(dir.path(), &out, parse_window("1s")?)?;

        let mut reader = csv::Reader::from_path(&out)?;
        let header: Vec<String> = reader.headers()?.iter().map(str::to_owned).collect();
        assert_eq!(header, csv_header());
        assert_eq!(header[0], "source");
        assert_eq!(header[3], FEATURES[0]);
        assert_eq!(header[header.len() - 2], "label");
        assert_eq!(header.last().map(String::as_str), Some("group"));
        assert_eq!(header.len(), FEATURES.len() + 5);

        let records: Vec<csv::StringRecord> = reader.records().collect::<Result<_, _>>()?;
        let keys: Vec<(&str, &str, &str, &str)> = records
            .iter()
            .map(|r| (&r[0], &r[1], &r[2], &r[header.len() - 2]))
            .collect();
        // Without groups, every source's group is its label.
        for r in &records {
            assert_eq!(&r[header.len() - 1], &r[header.len() - 2]);
        }
        let w0 = T0.to_string();
        let w1 = (T0 + 1000).to_string();
        assert_eq!(
            keys,
            [
                ("127.0.1.1", w0.as_str(), "1000", "benign"),
                ("127.0.1.2", w0.as_str(), "1000", "flood"),
                ("127.0.1.1", w1.as_str(), "1000", "benign"),
                ("127.0.1.2", w1.as_str(), "1000", "flood"),
            ]
        );

        // The values are exactly what the extractor computes live.
        let mut x = Extractor::new(Duration::from_secs(1), 100);
        for e in &events {
            x.push(e);
        }
        let rows = x.finish();
        assert_eq!(rows.len(), records.len());
        for (row, rec) in rows.iter().zip(&records) {
            let values: Vec<f64> = (3..3 + FEATURES.len())
                .map(|i| rec[i].parse::<f64>())
                .collect::<Result<_, _>>()?;
            assert_eq!(values, row.values);
        }
        let frames = 3 + FEATURES.iter().position(|f| *f == "frames_in").unwrap_or(0);
        assert_eq!(&records[1][frames], "50");

        assert_eq!(summary.events, events.len() as u64);
        assert_eq!(summary.rows, 4);
        assert_eq!(summary.sources, 2);
        assert_eq!(summary.window_ms, 1000);
        assert_eq!(summary.out, out);
        let by_label: Vec<(&str, u64)> = summary
            .rows_by_label
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        assert_eq!(by_label, [("benign", 2), ("flood", 2)]);
        assert_eq!(summary.extractor.late_events, 0);
        assert_eq!(summary.extractor.evicted_sources, 0);
        Ok(())
    }

    #[test]
    fn groups_fill_the_last_column_and_leave_labels_alone() -> TestResult {
        let dir = tempfile::tempdir()?;
        record(dir.path(), &sample(), &[(ip(2), "flood".to_string())])?;
        {
            let mut conn = db::open(dir.path())?;
            db::set_groups(&mut conn, &[(ip(1), "typos+nat".to_string())])?;
        }
        let out = dir.path().join("g.csv");
        export_csv(dir.path(), &out, parse_window("10s")?)?;
        let mut reader = csv::Reader::from_path(&out)?;
        let header: Vec<String> = reader.headers()?.iter().map(str::to_owned).collect();
        let (label, group) = (header.len() - 2, header.len() - 1);
        let rows: Vec<(String, String, String)> = reader
            .records()
            .map(|r| r.map(|r| (r[0].to_owned(), r[label].to_owned(), r[group].to_owned())))
            .collect::<Result<_, _>>()?;
        let want = |s: &str, l: &str, g: &str| (s.to_owned(), l.to_owned(), g.to_owned());
        assert_eq!(
            rows,
            [
                want("127.0.1.1", "benign", "typos+nat"),
                want("127.0.1.2", "flood", "flood"),
            ]
        );
        Ok(())
    }

    /// (source, window start, label, group).
    type LabelledRow = (String, String, String, String);

    /// Every row of a 1 s export of `dir`, as [`LabelledRow`]s.
    fn labelled_rows(dir: &Path) -> Result<Vec<LabelledRow>, Box<dyn std::error::Error>> {
        let out = dir.join("since.csv");
        export_csv(dir, &out, parse_window("1s")?)?;
        let mut reader = csv::Reader::from_path(&out)?;
        let n = reader.headers()?.len();
        let rows = reader
            .records()
            .map(|r| {
                r.map(|r| {
                    (
                        r[0].to_owned(),
                        r[1].to_owned(),
                        r[n - 2].to_owned(),
                        r[n - 1].to_owned(),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    #[test]
    fn windows_that_end_before_the_attack_began_are_benign() -> TestResult {
        let dir = tempfile::tempdir()?;
        record(dir.path(), &sample(), &[(ip(2), "tamper".to_string())])?;
        {
            let mut conn = db::open(dir.path())?;
            // The first window ends exactly at the first attacking frame: benign. An
            // unlabelled source's start is ignored.
            db::set_label_since(&mut conn, &[(ip(2), T0 + 1000), (ip(1), T0)])?;
        }
        let (w0, w1) = (T0.to_string(), (T0 + 1000).to_string());
        let want = |s: &str, w: &str, l: &str, g: &str| {
            (s.to_owned(), w.to_owned(), l.to_owned(), g.to_owned())
        };
        assert_eq!(
            labelled_rows(dir.path())?,
            [
                want("127.0.1.1", &w0, "benign", "benign"),
                want("127.0.1.2", &w0, "benign", "tamper-before"),
                want("127.0.1.1", &w1, "benign", "benign"),
                want("127.0.1.2", &w1, "tamper", "tamper"),
            ]
        );
        // One millisecond earlier, the first window holds the attack's first frame.
        {
            let mut conn = db::open(dir.path())?;
            db::set_label_since(&mut conn, &[(ip(2), T0 + 999)])?;
        }
        let rows = labelled_rows(dir.path())?;
        assert_eq!(rows[1], want("127.0.1.2", &w0, "tamper", "tamper"));
        // A source of such a kind that never attacked is benign throughout.
        {
            let mut conn = db::open(dir.path())?;
            db::set_label_since(&mut conn, &[(ip(2), i64::MAX)])?;
        }
        let rows = labelled_rows(dir.path())?;
        assert_eq!(rows[3], want("127.0.1.2", &w1, "benign", "tamper-before"));
        Ok(())
    }

    #[test]
    fn the_window_sets_the_rows() -> TestResult {
        let dir = tempfile::tempdir()?;
        record(dir.path(), &sample(), &[])?;
        let out = dir.path().join("w.csv");
        let ten = export_csv(dir.path(), &out, parse_window("10s")?)?;
        assert_eq!(ten.rows, 2);
        assert_eq!(ten.window_ms, 10_000);
        let half = export_csv(dir.path(), &out, parse_window("500ms")?)?;
        // Each source: windows 0, 500 (no events, a connection open: an idle row) and 1000.
        assert_eq!(half.rows, 6);
        let mut reader = csv::Reader::from_path(&out)?;
        for rec in reader.records() {
            let rec = rec?;
            assert_eq!(&rec[2], "500");
            assert_eq!(&rec[rec.len() - 1], "benign");
        }
        Ok(())
    }

    #[test]
    fn ipv6_labels_follow_the_source_grouping() -> TestResult {
        let dir = tempfile::tempdir()?;
        let v6: IpAddr = "2001:db8::7".parse()?;
        let e = Event {
            t_ms: T0,
            conn: 1,
            ip: v6,
            kind: EventKind::Accept,
        };
        record(dir.path(), &[e], &[(v6, "probe".to_string())])?;
        let out = dir.path().join("v6.csv");
        export_csv(dir.path(), &out, Duration::from_secs(1))?;
        let mut reader = csv::Reader::from_path(&out)?;
        let recs: Vec<csv::StringRecord> = reader.records().collect::<Result<_, _>>()?;
        assert_eq!(recs.len(), 1);
        assert_eq!(&recs[0][0], "2001:db8::/64");
        assert_eq!(&recs[0][recs[0].len() - 1], "probe");
        Ok(())
    }

    #[test]
    fn a_missing_database_is_a_clear_error_and_creates_nothing() -> TestResult {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("nothing-here");
        let out = dir.path().join("x.csv");
        let err = export_csv(&data, &out, Duration::from_secs(1));
        match err {
            Err(ExportError::NoActivity { path }) => assert_eq!(path, data.join("activity.db")),
            other => panic!("{other:?}"),
        }
        assert!(!data.exists());
        assert!(!out.exists());
        assert!(matches!(stats(&data), Err(ExportError::NoActivity { .. })));
        Ok(())
    }

    #[test]
    fn an_unwritable_output_is_an_error_naming_it() -> TestResult {
        let dir = tempfile::tempdir()?;
        record(dir.path(), &sample(), &[])?;
        let out = dir.path().join("no-such-dir").join("x.csv");
        match export_csv(dir.path(), &out, Duration::from_secs(1)) {
            Err(e @ ExportError::Io { .. }) => {
                assert!(e.to_string().contains("no-such-dir"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        Ok(())
    }

    #[test]
    fn an_empty_database_exports_only_the_header() -> TestResult {
        let dir = tempfile::tempdir()?;
        record(dir.path(), &[], &[])?;
        let out = dir.path().join("empty.csv");
        let summary = export_csv(dir.path(), &out, Duration::from_secs(1))?;
        assert_eq!(summary.rows, 0);
        let text = std::fs::read_to_string(&out)?;
        assert_eq!(text, format!("{}\n", csv_header().join(",")));
        Ok(())
    }

    #[test]
    fn stats_count_events_by_name() -> TestResult {
        let dir = tempfile::tempdir()?;
        record(
            dir.path(),
            &sample(),
            &[(ip(2), "flood".to_string()), (ip(3), "flood".to_string())],
        )?;
        let s = stats(dir.path())?;
        assert_eq!(s.events, 59);
        assert_eq!(s.by_event.len(), EVENT_NAMES.len());
        let get = |n: &str| s.by_event.get(n).copied().unwrap_or(u64::MAX);
        assert_eq!(get("accept"), 2);
        assert_eq!(get("frame_in"), 52);
        assert_eq!(get("frame_out"), 1);
        assert_eq!(get("auth_ok"), 1);
        assert_eq!(get("rate_limited"), 1);
        assert_eq!(get("close"), 2);
        assert_eq!(get("refused"), 0);
        assert_eq!(s.by_event.values().sum::<u64>(), s.events);
        assert_eq!(s.sources, 2);
        assert_eq!(s.first_ms, Some(T0));
        assert_eq!(s.last_ms, Some(T0 + 1300));
        assert_eq!(s.labels.get("flood"), Some(&2));
        Ok(())
    }

    /// The CSV export of a migrated version-1 database is byte for byte the export of the
    /// same events recorded by this version.
    #[test]
    fn a_migrated_database_exports_the_same_csv() -> TestResult {
        use crate::activity::db::tests::{every_kind, write_v1};
        let events = every_kind();
        let (v1, v2) = (tempfile::tempdir()?, tempfile::tempdir()?);
        write_v1(v1.path(), &events)?;
        db::insert(&mut db::open(v2.path())?, &events)?;
        let mut csv = Vec::new();
        for dir in [&v1, &v2] {
            let out = dir.path().join("train.csv");
            export_csv(dir.path(), &out, parse_window("1s")?)?;
            csv.push(std::fs::read(&out)?);
        }
        assert!(!csv[0].is_empty());
        assert_eq!(csv[0], csv[1]);
        Ok(())
    }
}
