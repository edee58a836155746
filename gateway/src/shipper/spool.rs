//! The append-only disk spool of decision events that could not be published yet.
//!
//! # Layout
//!
//! A spool directory holds numbered segment files (`00000000000000000007.seg`) and a `cursor`
//! file. Segments are only ever appended to; the highest-numbered one is the one being written,
//! the others are sealed. A new segment starts when the current one would grow past
//! [`SpoolOptions::segment_bytes`].
//!
//! Each segment starts with the 8-byte magic [`SEGMENT_MAGIC`] and then holds records:
//!
//! ```text
//! u32 LE  body length (bytes)
//! u32 LE  CRC-32 (IEEE) over the 4 length bytes and the body
//! body:   u16 LE subject length, subject (UTF-8),
//!         u16 LE id length, id (UTF-8),
//!         payload (the rest)
//! ```
//!
//! The `cursor` file (20 bytes: segment u64 LE, offset u64 LE, CRC-32 of those 16 bytes u32 LE)
//! names the first record that has not been acknowledged by JetStream. It is replaced
//! atomically (write `cursor.tmp`, rename) whenever the caller persists it; it is advanced only
//! past records that JetStream acknowledged ([`Spool::ack`]). Segments wholly before the
//! cursor are deleted, after the cursor that no longer needs them has been written. When the
//! spool becomes empty the writer moves to a fresh segment, so an idle spool holds 8 bytes.
//!
//! # Writing and durability
//!
//! [`Spool::append`] encodes a record into an in-memory buffer; [`Spool::flush`] hands the
//! buffer to the OS in one `write` (the shipper flushes after every batch it handles, and the
//! buffer flushes itself when it reaches [`SpoolOptions::write_buffer`]). Once flushed, a record
//! survives a crash or `kill -9` of the process. [`Spool::sync_job`] collects the files with
//! unsynced data (and the directory, when files were created, renamed or deleted) into a
//! [`SyncJob`] whose `fsync`s run off the async runtime; after it completes, records flushed
//! before it survive a power failure too. The shipper runs one every second and at shutdown.
//!
//! If a write fails (disk full, I/O error), the file is truncated back to the last complete
//! record, the buffered records stay in memory, and [`Spool::append`] refuses new records
//! ([`SpoolError::Unavailable`]) until a later [`Spool::flush`] succeeds.
//!
//! # Recovery
//!
//! [`Spool::open`] scans every segment and checks every record (length bounds, checksum,
//! UTF-8). A record that is cut short or fails its checksum ends the segment: the file is
//! truncated there (for the last segment that is the expected torn tail of a crash mid-write;
//! anywhere else it is corruption and is logged as an error). A torn record is therefore never
//! returned as an event. A segment with a foreign header is renamed to `*.seg.corrupt` and left
//! for inspection. A cursor that is missing, unreadable or not on a record boundary falls back
//! to the nearest earlier record boundary, so records may be sent again (JetStream drops the
//! resends it still remembers, see the shipper) but none is skipped.
//!
//! One process must own a spool directory at a time; nothing here locks it.

use super::Outgoing;
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The first 8 bytes of every segment file (format version 1).
pub const SEGMENT_MAGIC: [u8; 8] = *b"AEGSPL\x00\x01";
/// Length of the segment header.
pub const SEGMENT_HEADER_LEN: u64 = SEGMENT_MAGIC.len() as u64;
/// Length of a record's header (length and checksum).
pub const RECORD_HEADER_LEN: u64 = 8;
/// The largest record body accepted (and believed when reading): 64 MiB, NATS' own ceiling.
pub const MAX_RECORD_BYTES: u32 = 64 << 20;
/// Smallest possible body: two empty length-prefixed strings.
const MIN_BODY_BYTES: u32 = 4;
/// Largest segment [`SpoolOptions::for_max_bytes`] picks.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
/// Smallest segment [`SpoolOptions::for_max_bytes`] picks.
pub const MIN_SEGMENT_BYTES: u64 = 4 << 10;

const CURSOR_FILE: &str = "cursor";
const CURSOR_TMP: &str = "cursor.tmp";
const CURSOR_LEN: usize = 20;
const SEGMENT_SUFFIX: &str = ".seg";

/// What can go wrong in the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The record does not fit under [`SpoolOptions::max_bytes`].
    #[error("spool full: {used} of {max} bytes used, a {needed}-byte record does not fit")]
    Full {
        /// Bytes on disk and buffered.
        used: u64,
        /// The limit.
        max: u64,
        /// Size of the record that was refused.
        needed: u64,
    },
    /// The event cannot be encoded as a record (subject or id longer than 65535 bytes, or a
    /// body over [`MAX_RECORD_BYTES`]).
    #[error("event {id:?} cannot be spooled: {why}")]
    TooLarge {
        /// The event id (truncated to 100 characters).
        id: String,
        /// Which part is too long.
        why: String,
    },
    /// An earlier write failed and the buffered records have not reached the disk yet.
    #[error("spool not writable until a pending write succeeds: {0}")]
    Unavailable(String),
    /// A record read back does not decode (only after on-disk corruption since recovery).
    #[error("corrupt record in {file} at offset {offset}: {why}")]
    Corrupt {
        /// The segment file.
        file: PathBuf,
        /// Offset of the record.
        offset: u64,
        /// What is wrong.
        why: String,
    },
    /// A file-system operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl SpoolError {
    fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}

/// Sizes of a spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolOptions {
    /// Most bytes (segment files plus buffered records) the spool holds; an append that would
    /// go over is refused with [`SpoolError::Full`], unless the spool holds no unacknowledged
    /// record at all (then one record of any size up to [`MAX_RECORD_BYTES`] is accepted, so
    /// that a single large event cannot be refused forever).
    pub max_bytes: u64,
    /// A segment is sealed and a new one started when a record would take it past this.
    pub segment_bytes: u64,
    /// The in-memory buffer is written to the OS when it reaches this many bytes.
    pub write_buffer: usize,
}

impl SpoolOptions {
    /// Segments of an eighth of `max_bytes` (between 4 KiB and 64 MiB), so that deleting one
    /// acknowledged segment frees a useful share of the limit; a 256 KiB write buffer.
    pub fn for_max_bytes(max_bytes: u64) -> Self {
        Self {
            max_bytes,
            segment_bytes: (max_bytes / 8).clamp(MIN_SEGMENT_BYTES, DEFAULT_SEGMENT_BYTES),
            write_buffer: 256 << 10,
        }
    }
}

/// A place in the spool: a segment number and a byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// Segment number (the file name).
    pub segment: u64,
    /// Byte offset in the segment file.
    pub offset: u64,
}

impl Position {
    fn start_of(segment: u64) -> Self {
        Self {
            segment,
            offset: SEGMENT_HEADER_LEN,
        }
    }
}

/// Data cut off a segment during recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    /// The segment.
    pub segment: u64,
    /// Where the file now ends.
    pub offset: u64,
    /// Bytes removed.
    pub discarded: u64,
    /// True for the last segment (a torn write of a crash), false for a sealed one
    /// (corruption: the records after `offset` in it are lost).
    pub tail: bool,
    /// Why the record at `offset` was rejected.
    pub why: String,
}

/// What [`Spool::open`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Unacknowledged records found (they will be sent).
    pub events: u64,
    /// Bytes on disk.
    pub bytes: u64,
    /// Segment files kept.
    pub segments: usize,
    /// Records cut off.
    pub truncated: Vec<Truncation>,
    /// Segments set aside as `*.seg.corrupt` (foreign header).
    pub quarantined: Vec<PathBuf>,
    /// Set when the cursor file was missing, unreadable or pointed between records, and was
    /// replaced by an earlier position: the records in between may be sent a second time.
    pub cursor_note: Option<String>,
}

/// `fsync`s to run off the async runtime; see [`Spool::sync_job`].
#[derive(Debug)]
pub struct SyncJob {
    files: Vec<PathBuf>,
    dir: Option<PathBuf>,
}

impl SyncJob {
    /// `fdatasync` every file (a file deleted meanwhile is skipped), then `fsync` the directory
    /// if entries changed. Blocking.
    pub fn run(self) -> Result<(), SpoolError> {
        for path in &self.files {
            match File::open(path) {
                Ok(file) => file
                    .sync_data()
                    .map_err(SpoolError::io(format!("fsync {}", path.display())))?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(SpoolError::io(format!("opening {}", path.display()))(e)),
            }
        }
        if let Some(dir) = &self.dir {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(SpoolError::io(format!("fsync directory {}", dir.display())))?;
        }
        Ok(())
    }

    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.dir.is_none()
    }
}

/// An open spool. See the module docs.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    options: SpoolOptions,
    /// Segment number → bytes on disk (flushed), header included.
    segments: BTreeMap<u64, u64>,
    /// The segment being written (always a key of `segments`).
    write_segment: u64,
    write_file: File,
    /// Encoded records not yet handed to the OS.
    buffer: Vec<u8>,
    /// Set after a failed write, until a flush succeeds.
    write_error: Option<String>,
    /// First unacknowledged record.
    cursor: Position,
    /// The cursor last written to the `cursor` file.
    persisted_cursor: Option<Position>,
    /// Next record to hand out for sending.
    read: Position,
    reader: Option<SegmentReader>,
    /// Records from the cursor to the end (buffered ones included).
    events: u64,
    /// Segments with data not yet fsynced.
    unsynced: BTreeSet<u64>,
    /// Directory entries changed since the last sync.
    dir_dirty: bool,
}

#[derive(Debug)]
struct SegmentReader {
    segment: u64,
    offset: u64,
    file: BufReader<File>,
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir` and recovers it; see the module docs.
    /// Blocking.
    pub fn open(dir: &Path, options: SpoolOptions) -> Result<(Self, Recovery), SpoolError> {
        fs::create_dir_all(dir).map_err(SpoolError::io(format!("creating {}", dir.display())))?;
        let mut recovery = Recovery::default();
        let _ = fs::remove_file(dir.join(CURSOR_TMP));

        let mut numbers = list_segments(dir)?;
        numbers.sort_unstable();
        let highest_seen = numbers.last().copied();
        let stored_cursor = read_cursor(dir);

        // Scan every segment: validate headers and records, truncate bad tails.
        let mut segments = BTreeMap::new();
        let mut boundaries: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        let count = numbers.len();
        for (i, number) in numbers.into_iter().enumerate() {
            let last = i + 1 == count;
            let path = segment_path(dir, number);
            match scan_segment(&path, last)? {
                Scan::Quarantine(why) => {
                    let aside = path.with_extension("seg.corrupt");
                    fs::rename(&path, &aside)
                        .map_err(SpoolError::io(format!("renaming {} aside", path.display())))?;
                    tracing::error!(
                        segment = %path.display(),
                        moved_to = %aside.display(),
                        why,
                        "decision spool: segment with a foreign header set aside; its contents are not sent"
                    );
                    recovery.quarantined.push(aside);
                }
                Scan::Empty => {
                    fs::remove_file(&path)
                        .map_err(SpoolError::io(format!("removing {}", path.display())))?;
                }
                Scan::Valid {
                    len,
                    records,
                    truncation,
                } => {
                    if let Some(t) = truncation {
                        let t = Truncation {
                            segment: number,
                            ..t
                        };
                        if t.tail {
                            tracing::warn!(
                                segment = %path.display(),
                                offset = t.offset,
                                discarded = t.discarded,
                                why = %t.why,
                                "decision spool: torn record at the end (crash during a write) truncated"
                            );
                        } else {
                            tracing::error!(
                                segment = %path.display(),
                                offset = t.offset,
                                discarded = t.discarded,
                                why = %t.why,
                                "decision spool: corrupt record in a sealed segment; the rest of the segment is discarded"
                            );
                        }
                        recovery.truncated.push(t);
                    }
                    segments.insert(number, len);
                    boundaries.insert(number, records);
                }
            }
        }

        // Place the cursor on a record boundary at or before the stored one.
        let first = segments.keys().next().copied();
        let cursor = match (stored_cursor, first) {
            (_, None) => None,
            (Err(note), Some(first)) => {
                recovery.cursor_note = Some(note);
                Some(Position::start_of(first))
            }
            (Ok(None), Some(first)) => Some(Position::start_of(first)),
            (Ok(Some(stored)), Some(first)) if stored.segment < first => {
                recovery.cursor_note = Some(format!(
                    "cursor {stored:?} is before the oldest segment {first}; starting there"
                ));
                Some(Position::start_of(first))
            }
            (Ok(Some(stored)), Some(_)) => {
                match segments.range(..=stored.segment).next_back() {
                    Some((&number, &len)) if number == stored.segment => {
                        let starts = boundaries.get(&number).map(Vec::as_slice).unwrap_or(&[]);
                        if stored.offset >= len || starts.contains(&stored.offset) {
                            Some(Position {
                                segment: number,
                                offset: stored.offset.min(len),
                            })
                        } else {
                            let offset = starts
                                .iter()
                                .copied()
                                .filter(|&s| s <= stored.offset)
                                .max()
                                .unwrap_or(SEGMENT_HEADER_LEN);
                            recovery.cursor_note = Some(format!(
                                "cursor {stored:?} is not on a record boundary; moved back to offset {offset}"
                            ));
                            Some(Position {
                                segment: number,
                                offset,
                            })
                        }
                    }
                    // The stored segment is gone (set aside): resume at the next one.
                    _ => {
                        let next = segments
                            .range(stored.segment..)
                            .next()
                            .map(|(&n, _)| n)
                            .or(first)
                            .unwrap_or(stored.segment);
                        Some(Position::start_of(next))
                    }
                }
            }
        };
        if let Some(note) = &recovery.cursor_note {
            tracing::warn!(
                note,
                "decision spool: cursor not usable as stored; some events may be sent again"
            );
        }

        // Segments wholly before the cursor were acknowledged: delete them.
        if let Some(cursor) = cursor {
            let doomed: Vec<u64> = segments.range(..cursor.segment).map(|(&n, _)| n).collect();
            for number in doomed {
                let path = segment_path(dir, number);
                fs::remove_file(&path)
                    .map_err(SpoolError::io(format!("removing {}", path.display())))?;
                segments.remove(&number);
            }
        }

        // Count what is left to send.
        let mut events = 0u64;
        if let Some(cursor) = cursor {
            for (number, starts) in &boundaries {
                if *number == cursor.segment {
                    events += starts.iter().filter(|&&s| s >= cursor.offset).count() as u64;
                } else if *number > cursor.segment && segments.contains_key(number) {
                    events += starts.len() as u64;
                }
            }
        }

        // The writer appends to the last segment, or a new one.
        let mut dir_dirty = false;
        let (write_segment, cursor) = match (segments.keys().next_back().copied(), cursor) {
            (Some(last), Some(cursor)) => (last, cursor),
            _ => {
                let number = highest_seen
                    .max(stored_cursor_segment(dir))
                    .map_or(0, |n| n.saturating_add(1));
                create_segment(dir, number)?;
                segments.insert(number, SEGMENT_HEADER_LEN);
                dir_dirty = true;
                (number, Position::start_of(number))
            }
        };
        let write_path = segment_path(dir, write_segment);
        let write_file = OpenOptions::new()
            .append(true)
            .open(&write_path)
            .map_err(SpoolError::io(format!("opening {}", write_path.display())))?;

        recovery.events = events;
        recovery.bytes = segments.values().sum();
        recovery.segments = segments.len();
        let mut spool = Self {
            dir: dir.to_owned(),
            options,
            segments,
            write_segment,
            write_file,
            buffer: Vec::new(),
            write_error: None,
            cursor,
            persisted_cursor: None,
            read: cursor,
            reader: None,
            events,
            unsynced: BTreeSet::new(),
            dir_dirty,
        };
        spool.persist_cursor()?;
        Ok((spool, recovery))
    }

    /// Appends one event (buffered; see [`Spool::flush`]). Returns the position just after it.
    pub fn append(&mut self, event: &Outgoing) -> Result<Position, SpoolError> {
        self.append_inner(event, false)
    }

    /// Like [`Spool::append`] but ignores [`SpoolOptions::max_bytes`]: for the events still in
    /// memory at shutdown, which would otherwise be lost.
    pub fn append_unbounded(&mut self, event: &Outgoing) -> Result<Position, SpoolError> {
        self.append_inner(event, true)
    }

    fn append_inner(&mut self, event: &Outgoing, unbounded: bool) -> Result<Position, SpoolError> {
        if let Some(error) = &self.write_error {
            return Err(SpoolError::Unavailable(error.clone()));
        }
        let record = encode(event)?;
        let size = record.len() as u64;
        let end = self.write_end();
        let roll =
            end > SEGMENT_HEADER_LEN && end.saturating_add(size) > self.options.segment_bytes;
        let needed = if roll {
            size + SEGMENT_HEADER_LEN
        } else {
            size
        };
        let used = self.bytes();
        if !unbounded && self.events > 0 && used.saturating_add(needed) > self.options.max_bytes {
            return Err(SpoolError::Full {
                used,
                max: self.options.max_bytes,
                needed,
            });
        }
        if roll {
            self.roll()?;
        }
        self.buffer.extend_from_slice(&record);
        self.events += 1;
        let position = Position {
            segment: self.write_segment,
            offset: self.write_end(),
        };
        if self.buffer.len() >= self.options.write_buffer {
            self.flush()?;
        }
        Ok(position)
    }

    /// Hands the buffered records to the OS (one `write`). After this they survive a crash of
    /// the process, not yet a power failure (see [`Spool::sync_job`]). On failure the file is
    /// cut back to the last complete record and the records stay buffered for the next try.
    pub fn flush(&mut self) -> Result<(), SpoolError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let flushed = self.flushed_len();
        let path = segment_path(&self.dir, self.write_segment);
        let result = self
            .write_file
            .metadata()
            .and_then(|meta| {
                if meta.len() != flushed {
                    self.write_file.set_len(flushed)?;
                }
                Ok(())
            })
            .and_then(|()| self.write_file.write_all(&self.buffer));
        match result {
            Ok(()) => {
                let len = flushed + self.buffer.len() as u64;
                self.segments.insert(self.write_segment, len);
                self.buffer.clear();
                self.unsynced.insert(self.write_segment);
                self.write_error = None;
                Ok(())
            }
            Err(source) => {
                // Remove a partial record so that the next write starts on a boundary, and
                // forget anything a reader may have buffered from it.
                let _ = self.write_file.set_len(flushed);
                if self
                    .reader
                    .as_ref()
                    .is_some_and(|r| r.segment == self.write_segment)
                {
                    self.reader = None;
                }
                let error = SpoolError::Io {
                    context: format!("writing {}", path.display()),
                    source,
                };
                self.write_error = Some(error.to_string());
                Err(error)
            }
        }
    }

    /// Records buffered and not yet flushed.
    pub fn has_buffered(&self) -> bool {
        !self.buffer.is_empty()
    }

    /// True while a failed write keeps records in memory and appends are refused.
    pub fn is_unavailable(&self) -> bool {
        self.write_error.is_some()
    }

    /// The next record to send and the position just after it, or `None` when every flushed
    /// record has been handed out. Only flushed records are read: flush first.
    pub fn next_record(&mut self) -> Result<Option<(Outgoing, Position)>, SpoolError> {
        loop {
            let end = self.flushed_end_of(self.read.segment);
            if self.read.offset < end {
                break;
            }
            if self.read.segment >= self.write_segment {
                return Ok(None);
            }
            let next = self
                .segments
                .range(self.read.segment + 1..)
                .next()
                .map_or(self.write_segment, |(&n, _)| n);
            self.read = Position::start_of(next);
        }
        let end = self.flushed_end_of(self.read.segment);
        let path = segment_path(&self.dir, self.read.segment);
        let at = self.read;
        let reader = match self.reader.take() {
            Some(r) if r.segment == at.segment => r,
            _ => {
                let file = File::open(&path)
                    .map_err(SpoolError::io(format!("opening {}", path.display())))?;
                SegmentReader {
                    segment: at.segment,
                    offset: 0,
                    file: BufReader::with_capacity(256 << 10, file),
                }
            }
        };
        let mut reader = reader;
        if reader.offset != at.offset {
            reader
                .file
                .seek(SeekFrom::Start(at.offset))
                .map_err(SpoolError::io(format!("seeking in {}", path.display())))?;
            reader.offset = at.offset;
        }
        let corrupt = |why: String| SpoolError::Corrupt {
            file: path.clone(),
            offset: at.offset,
            why,
        };
        let mut head = [0u8; RECORD_HEADER_LEN as usize];
        if at.offset + RECORD_HEADER_LEN > end {
            return Err(corrupt("record header cut short".into()));
        }
        reader
            .file
            .read_exact(&mut head)
            .map_err(SpoolError::io(format!("reading {}", path.display())))?;
        let (len, crc) = split_header(head);
        if !(MIN_BODY_BYTES..=MAX_RECORD_BYTES).contains(&len)
            || at.offset + RECORD_HEADER_LEN + u64::from(len) > end
        {
            return Err(corrupt(format!("bad record length {len}")));
        }
        let mut body = vec![0u8; len as usize];
        reader
            .file
            .read_exact(&mut body)
            .map_err(SpoolError::io(format!("reading {}", path.display())))?;
        if checksum(len, &body) != crc {
            return Err(corrupt("checksum mismatch".into()));
        }
        let event = decode(Bytes::from(body)).map_err(corrupt)?;
        let next = Position {
            segment: at.segment,
            offset: at.offset + RECORD_HEADER_LEN + u64::from(len),
        };
        reader.offset = next.offset;
        self.reader = Some(reader);
        self.read = next;
        Ok(Some((event, next)))
    }

    /// Hands out records again from the cursor (the first unacknowledged one).
    pub fn rewind(&mut self) {
        self.read = self.cursor;
        self.reader = None;
    }

    /// JetStream acknowledged the record that ends at `end` (records are acknowledged in
    /// order). Advances the cursor, deletes segments wholly before it (persisting the cursor
    /// first) and, when nothing is left, moves the writer to a fresh segment. An `end` at or
    /// before the cursor is ignored.
    pub fn ack(&mut self, end: Position) -> Result<(), SpoolError> {
        if end <= self.cursor {
            return Ok(());
        }
        self.cursor = end;
        self.events = self.events.saturating_sub(1);
        self.compact()
    }

    fn compact(&mut self) -> Result<(), SpoolError> {
        let mut doomed = Vec::new();
        while self.cursor.segment < self.write_segment {
            let len = self
                .segments
                .get(&self.cursor.segment)
                .copied()
                .unwrap_or(0);
            if self.cursor.offset < len {
                break;
            }
            doomed.push(self.cursor.segment);
            let next = self
                .segments
                .range(self.cursor.segment + 1..)
                .next()
                .map_or(self.write_segment, |(&n, _)| n);
            self.cursor = Position::start_of(next);
        }
        // Empty: start afresh so the acknowledged bytes do not count against the limit.
        if self.buffer.is_empty()
            && self.write_error.is_none()
            && self.cursor.segment == self.write_segment
            && self.cursor.offset >= self.flushed_len()
            && self.flushed_len() > SEGMENT_HEADER_LEN
        {
            doomed.push(self.write_segment);
            self.roll()?;
            self.cursor = Position::start_of(self.write_segment);
            self.events = 0;
        }
        if self.read < self.cursor {
            self.read = self.cursor;
            self.reader = None;
        }
        if doomed.is_empty() {
            return Ok(());
        }
        // The cursor goes first so that a restart does not look for the deleted segments; if
        // writing it fails, deleting is still safe (recovery starts at the oldest segment left).
        let mut outcome = self.persist_cursor();
        for number in doomed {
            let path = segment_path(&self.dir, number);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    // Still forgotten here: it is before the cursor, and the next start
                    // deletes it.
                    if outcome.is_ok() {
                        outcome = Err(SpoolError::io(format!("removing {}", path.display()))(e));
                    }
                }
            }
            self.segments.remove(&number);
            self.unsynced.remove(&number);
            self.dir_dirty = true;
        }
        outcome
    }

    /// Seals the current segment and starts the next one.
    fn roll(&mut self) -> Result<(), SpoolError> {
        self.flush()?;
        let number = self.write_segment + 1;
        let file = create_segment(&self.dir, number)?;
        self.write_file = file;
        self.write_segment = number;
        self.segments.insert(number, SEGMENT_HEADER_LEN);
        self.unsynced.insert(number);
        self.dir_dirty = true;
        Ok(())
    }

    /// Writes the cursor file if the cursor moved since it was last written (`cursor.tmp`,
    /// then an atomic rename). Not fsynced here; [`Spool::sync_job`] syncs the directory.
    pub fn persist_cursor(&mut self) -> Result<(), SpoolError> {
        if self.persisted_cursor == Some(self.cursor) {
            return Ok(());
        }
        let tmp = self.dir.join(CURSOR_TMP);
        let mut bytes = [0u8; CURSOR_LEN];
        let (head, crc) = bytes.split_at_mut(16);
        let (segment, offset) = head.split_at_mut(8);
        segment.copy_from_slice(&self.cursor.segment.to_le_bytes());
        offset.copy_from_slice(&self.cursor.offset.to_le_bytes());
        let sum = crc32fast::hash(head);
        crc.copy_from_slice(&sum.to_le_bytes());
        fs::write(&tmp, bytes).map_err(SpoolError::io(format!("writing {}", tmp.display())))?;
        fs::rename(&tmp, self.dir.join(CURSOR_FILE))
            .map_err(SpoolError::io(format!("renaming {}", tmp.display())))?;
        self.persisted_cursor = Some(self.cursor);
        self.dir_dirty = true;
        Ok(())
    }

    /// Flushes, then returns the `fsync`s that make everything flushed so far survive a power
    /// failure ([`SyncJob::run`], blocking: run it off the async runtime). `None` when there
    /// is nothing to sync.
    pub fn sync_job(&mut self) -> Result<Option<SyncJob>, SpoolError> {
        self.flush()?;
        let job = SyncJob {
            files: std::mem::take(&mut self.unsynced)
                .into_iter()
                .map(|n| segment_path(&self.dir, n))
                .collect(),
            dir: std::mem::take(&mut self.dir_dirty).then(|| self.dir.clone()),
        };
        Ok((!job.is_empty()).then_some(job))
    }

    /// Unacknowledged records (buffered ones included).
    pub fn pending_events(&self) -> u64 {
        self.events
    }

    /// Bytes on disk plus bytes buffered: what counts against [`SpoolOptions::max_bytes`].
    pub fn bytes(&self) -> u64 {
        self.segments.values().sum::<u64>() + self.buffer.len() as u64
    }

    /// No unacknowledged record.
    pub fn is_empty(&self) -> bool {
        self.events == 0
    }

    /// Every flushed record has been handed out by [`Spool::next_record`].
    pub fn all_read(&self) -> bool {
        self.read.segment >= self.write_segment && self.read.offset >= self.flushed_len()
    }

    /// The first unacknowledged record.
    pub fn cursor(&self) -> Position {
        self.cursor
    }

    /// The options it was opened with.
    pub fn options(&self) -> SpoolOptions {
        self.options
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn flushed_len(&self) -> u64 {
        self.segments
            .get(&self.write_segment)
            .copied()
            .unwrap_or(SEGMENT_HEADER_LEN)
    }

    fn flushed_end_of(&self, segment: u64) -> u64 {
        self.segments.get(&segment).copied().unwrap_or(0)
    }

    fn write_end(&self) -> u64 {
        self.flushed_len() + self.buffer.len() as u64
    }
}

fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:020}{SEGMENT_SUFFIX}"))
}

fn list_segments(dir: &Path) -> Result<Vec<u64>, SpoolError> {
    let mut out = Vec::new();
    let entries =
        fs::read_dir(dir).map_err(SpoolError::io(format!("listing {}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(SpoolError::io(format!("listing {}", dir.display())))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(SEGMENT_SUFFIX) else {
            continue;
        };
        if stem.len() == 20
            && stem.bytes().all(|b| b.is_ascii_digit())
            && let Ok(number) = stem.parse::<u64>()
        {
            out.push(number);
        }
    }
    Ok(out)
}

fn create_segment(dir: &Path, number: u64) -> Result<File, SpoolError> {
    let path = segment_path(dir, number);
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .map_err(SpoolError::io(format!("creating {}", path.display())))?;
    file.write_all(&SEGMENT_MAGIC)
        .map_err(SpoolError::io(format!("writing {}", path.display())))?;
    drop(file);
    OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(SpoolError::io(format!("opening {}", path.display())))
}

/// The stored cursor: `Ok(None)` when there is no file, `Err(why)` when it is unreadable.
fn read_cursor(dir: &Path) -> Result<Option<Position>, String> {
    let path = dir.join(CURSOR_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let parsed = <[u8; CURSOR_LEN]>::try_from(bytes.as_slice())
        .ok()
        .and_then(|b| {
            let [
                s0,
                s1,
                s2,
                s3,
                s4,
                s5,
                s6,
                s7,
                o0,
                o1,
                o2,
                o3,
                o4,
                o5,
                o6,
                o7,
                c0,
                c1,
                c2,
                c3,
            ] = b;
            let head = [
                s0, s1, s2, s3, s4, s5, s6, s7, o0, o1, o2, o3, o4, o5, o6, o7,
            ];
            let valid = crc32fast::hash(&head) == u32::from_le_bytes([c0, c1, c2, c3]);
            valid.then(|| Position {
                segment: u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]),
                offset: u64::from_le_bytes([o0, o1, o2, o3, o4, o5, o6, o7]),
            })
        });
    match parsed {
        Some(position) => Ok(Some(position)),
        None => Err(format!(
            "{} is damaged ({} bytes)",
            path.display(),
            bytes.len()
        )),
    }
}

fn stored_cursor_segment(dir: &Path) -> Option<u64> {
    read_cursor(dir).ok().flatten().map(|c| c.segment)
}

enum Scan {
    /// A last segment with no complete header (crash while creating it), or a sealed one
    /// without records: delete.
    Empty,
    /// Not one of ours.
    Quarantine(String),
    /// Valid up to `len`, with the offsets of its records.
    Valid {
        len: u64,
        records: Vec<u64>,
        truncation: Option<Truncation>,
    },
}

fn scan_segment(path: &Path, last: bool) -> Result<Scan, SpoolError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(SpoolError::io(format!("opening {}", path.display())))?;
    let file_len = file
        .metadata()
        .map_err(SpoolError::io(format!("reading {}", path.display())))?
        .len();
    let mut reader = BufReader::with_capacity(1 << 20, &file);
    let mut magic = [0u8; SEGMENT_MAGIC.len()];
    if file_len < SEGMENT_HEADER_LEN {
        // Nothing after a partial header can be a record.
        return Ok(Scan::Empty);
    }
    reader
        .read_exact(&mut magic)
        .map_err(SpoolError::io(format!("reading {}", path.display())))?;
    if magic != SEGMENT_MAGIC {
        return Ok(Scan::Quarantine(format!(
            "header {} is not {}",
            hex::encode(magic),
            hex::encode(SEGMENT_MAGIC)
        )));
    }
    let mut records = Vec::new();
    let mut offset = SEGMENT_HEADER_LEN;
    let mut body = Vec::new();
    let why = loop {
        if offset == file_len {
            break None;
        }
        if offset + RECORD_HEADER_LEN > file_len {
            break Some("record header cut short".to_owned());
        }
        let mut head = [0u8; RECORD_HEADER_LEN as usize];
        reader
            .read_exact(&mut head)
            .map_err(SpoolError::io(format!("reading {}", path.display())))?;
        let (len, crc) = split_header(head);
        if !(MIN_BODY_BYTES..=MAX_RECORD_BYTES).contains(&len) {
            break Some(format!("bad record length {len}"));
        }
        let end = offset + RECORD_HEADER_LEN + u64::from(len);
        if end > file_len {
            break Some(format!(
                "record of {len} bytes cut short at {}",
                file_len - offset - RECORD_HEADER_LEN
            ));
        }
        body.resize(len as usize, 0);
        reader
            .read_exact(&mut body)
            .map_err(SpoolError::io(format!("reading {}", path.display())))?;
        if checksum(len, &body) != crc {
            break Some("checksum mismatch".to_owned());
        }
        if let Err(why) = decode(Bytes::copy_from_slice(&body)) {
            break Some(why);
        }
        records.push(offset);
        offset = end;
    };
    drop(reader);
    let truncation = match why {
        None => None,
        Some(why) => {
            file.set_len(offset)
                .map_err(SpoolError::io(format!("truncating {}", path.display())))?;
            file.sync_all()
                .map_err(SpoolError::io(format!("fsync {}", path.display())))?;
            Some(Truncation {
                segment: 0,
                offset,
                discarded: file_len - offset,
                tail: last,
                why,
            })
        }
    };
    if records.is_empty() && !last {
        return Ok(Scan::Empty);
    }
    Ok(Scan::Valid {
        len: offset,
        records,
        truncation,
    })
}

fn split_header(head: [u8; RECORD_HEADER_LEN as usize]) -> (u32, u32) {
    let [a, b, c, d, e, f, g, h] = head;
    (
        u32::from_le_bytes([a, b, c, d]),
        u32::from_le_bytes([e, f, g, h]),
    )
}

fn checksum(len: u32, body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len.to_le_bytes());
    hasher.update(body);
    hasher.finalize()
}

/// The record (header and body) for `event`.
fn encode(event: &Outgoing) -> Result<Vec<u8>, SpoolError> {
    let too_large = |why: String| SpoolError::TooLarge {
        id: event.id.chars().take(100).collect(),
        why,
    };
    let subject_len = u16::try_from(event.subject.len())
        .map_err(|_| too_large(format!("subject of {} bytes", event.subject.len())))?;
    let id_len = u16::try_from(event.id.len())
        .map_err(|_| too_large(format!("id of {} bytes", event.id.len())))?;
    let body_len = 4 + event.subject.len() + event.id.len() + event.payload.len();
    let len = u32::try_from(body_len)
        .ok()
        .filter(|&len| len <= MAX_RECORD_BYTES)
        .ok_or_else(|| too_large(format!("record of {body_len} bytes")))?;
    let mut record = Vec::with_capacity(RECORD_HEADER_LEN as usize + body_len);
    record.extend_from_slice(&len.to_le_bytes());
    record.extend_from_slice(&[0; 4]);
    record.extend_from_slice(&subject_len.to_le_bytes());
    record.extend_from_slice(event.subject.as_bytes());
    record.extend_from_slice(&id_len.to_le_bytes());
    record.extend_from_slice(event.id.as_bytes());
    record.extend_from_slice(&event.payload);
    let crc = record
        .get(RECORD_HEADER_LEN as usize..)
        .map_or(0, |body| checksum(len, body));
    if let Some(slot) = record.get_mut(4..8) {
        slot.copy_from_slice(&crc.to_le_bytes());
    }
    Ok(record)
}

/// The event in a record body.
fn decode(body: Bytes) -> Result<Outgoing, String> {
    let mut rest = body;
    let subject = take_str(&mut rest, "subject")?;
    let id = take_str(&mut rest, "id")?;
    Ok(Outgoing {
        subject,
        id,
        payload: rest,
    })
}

fn take_str(rest: &mut Bytes, what: &str) -> Result<String, String> {
    let len = match rest.get(..2) {
        Some(&[a, b]) => usize::from(u16::from_le_bytes([a, b])),
        _ => return Err(format!("{what} length cut short")),
    };
    if rest.len() < 2 + len {
        return Err(format!("{what} cut short"));
    }
    let _ = rest.split_to(2);
    let bytes = rest.split_to(len);
    String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]
    use super::*;

    fn event(i: u64) -> Outgoing {
        Outgoing {
            subject: format!("aegis.decisions.acme.gw{}", i % 3),
            id: format!("evt-{i:06}"),
            payload: Bytes::from(format!("{{\"n\":{i:06},\"pad\":\"{}\"}}", "x".repeat(40))),
        }
    }

    fn options(max_bytes: u64, segment_bytes: u64) -> SpoolOptions {
        SpoolOptions {
            max_bytes,
            segment_bytes,
            write_buffer: 1024,
        }
    }

    fn big() -> SpoolOptions {
        options(1 << 30, 64 << 20)
    }

    /// Reads every remaining record (acknowledging nothing).
    fn read_all(spool: &mut Spool) -> Vec<(Outgoing, Position)> {
        let mut out = Vec::new();
        while let Some(r) = spool.next_record().unwrap() {
            out.push(r);
        }
        out
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        files.sort();
        files
    }

    #[test]
    fn appends_reads_back_in_order_and_acks() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, recovery) = Spool::open(dir.path(), big()).unwrap();
        assert_eq!(recovery.events, 0);
        assert!(spool.is_empty());
        for i in 0..100 {
            spool.append(&event(i)).unwrap();
        }
        assert_eq!(spool.pending_events(), 100);
        // Buffered records are not handed out before a flush.
        let mut early = Vec::new();
        while let Some(r) = spool.next_record().unwrap() {
            early.push(r);
        }
        spool.flush().unwrap();
        let rest = read_all(&mut spool);
        let all: Vec<_> = early.into_iter().chain(rest).collect();
        assert_eq!(all.len(), 100);
        for (i, (e, _)) in all.iter().enumerate() {
            assert_eq!(e, &event(i as u64));
        }
        assert!(spool.all_read());
        for (_, end) in &all[..40] {
            spool.ack(*end).unwrap();
        }
        assert_eq!(spool.pending_events(), 60);
        // A rewind hands out the unacknowledged ones again.
        spool.rewind();
        let again = read_all(&mut spool);
        assert_eq!(again.len(), 60);
        assert_eq!(again[0].0, event(40));
        for (_, end) in &again {
            spool.ack(*end).unwrap();
        }
        assert!(spool.is_empty());
        // Empty: the writer moved to a fresh segment, the old one is gone.
        assert_eq!(segment_files(dir.path()).len(), 1);
        assert_eq!(spool.bytes(), SEGMENT_HEADER_LEN);
    }

    #[test]
    fn cursor_survives_reopen_and_only_unacked_records_come_back() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut spool, _) = Spool::open(dir.path(), big()).unwrap();
            for i in 0..50 {
                spool.append(&event(i)).unwrap();
            }
            spool.flush().unwrap();
            let all = read_all(&mut spool);
            for (_, end) in &all[..20] {
                spool.ack(*end).unwrap();
            }
            spool.persist_cursor().unwrap();
            // Dropped without any further call, as in a crash after the flush.
        }
        let (mut spool, recovery) = Spool::open(dir.path(), big()).unwrap();
        assert_eq!(recovery.events, 30);
        assert_eq!(recovery.cursor_note, None);
        let all = read_all(&mut spool);
        let ids: Vec<_> = all.iter().map(|(e, _)| e.id.clone()).collect();
        let expected: Vec<_> = (20..50).map(|i| event(i).id).collect();
        assert_eq!(ids, expected);
        // Appends after a reopen go after the recovered records.
        spool.append(&event(50)).unwrap();
        spool.flush().unwrap();
        assert_eq!(read_all(&mut spool)[0].0, event(50));
    }

    #[test]
    fn unflushed_records_are_not_on_disk_but_flushed_ones_are() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut spool, _) = Spool::open(dir.path(), big()).unwrap();
            for i in 0..5 {
                spool.append(&event(i)).unwrap();
            }
            spool.flush().unwrap();
            spool.append(&event(5)).unwrap();
            // Dropped before the flush: event 5 was only in memory.
        }
        let (_, recovery) = Spool::open(dir.path(), big()).unwrap();
        assert_eq!(recovery.events, 5);
    }

    #[test]
    fn torn_tail_record_is_truncated_never_misread() {
        let dir = tempfile::tempdir().unwrap();
        let path;
        let full_len;
        {
            let (mut spool, _) = Spool::open(dir.path(), big()).unwrap();
            for i in 0..10 {
                spool.append(&event(i)).unwrap();
            }
            spool.flush().unwrap();
            path = segment_files(dir.path()).pop().unwrap();
            full_len = fs::metadata(&path).unwrap().len();
        }
        let record_len = encode(&event(9)).unwrap().len() as u64;
        // Every possible cut inside the last record: nine records come back, intact.
        for cut in 1..record_len {
            let copy = tempfile::tempdir().unwrap();
            let target = copy.path().join(path.file_name().unwrap());
            fs::copy(&path, &target).unwrap();
            OpenOptions::new()
                .write(true)
                .open(&target)
                .unwrap()
                .set_len(full_len - cut)
                .unwrap();
            let (mut spool, recovery) = Spool::open(copy.path(), big()).unwrap();
            assert_eq!(recovery.events, 9, "cut {cut}");
            assert_eq!(recovery.truncated.len(), 1);
            assert!(recovery.truncated[0].tail);
            assert_eq!(recovery.truncated[0].discarded, record_len - cut);
            let all = read_all(&mut spool);
            assert_eq!(all.len(), 9);
            assert_eq!(all[8].0, event(8));
            assert_eq!(
                fs::metadata(&target).unwrap().len(),
                full_len - record_len,
                "truncated to the last whole record"
            );
            // New records land cleanly after the truncation point.
            spool.append(&event(100)).unwrap();
            spool.flush().unwrap();
            drop(spool);
            let (mut spool, recovery) = Spool::open(copy.path(), big()).unwrap();
            assert!(recovery.truncated.is_empty());
            let all = read_all(&mut spool);
            assert_eq!(all.len(), 10);
            assert_eq!(all[9].0, event(100));
        }
    }

    #[test]
    fn flipped_bits_and_zeroed_tails_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut spool, _) = Spool::open(dir.path(), big()).unwrap();
            for i in 0..3 {
                spool.append(&event(i)).unwrap();
            }
            spool.flush().unwrap();
        }
        let path = segment_files(dir.path()).pop().unwrap();
        let original = fs::read(&path).unwrap();
        let record_len = encode(&event(0)).unwrap().len();
        // A flipped bit in the payload of the last record.
        let mut bytes = original.clone();
        let last = bytes.len() - 3;
        bytes[last] ^= 0x10;
        fs::write(&path, &bytes).unwrap();
        let (mut spool, recovery) = Spool::open(dir.path(), big()).unwrap();
        assert_eq!(recovery.events, 2);
        assert!(recovery.truncated[0].why.contains("checksum"));
        assert_eq!(read_all(&mut spool).len(), 2);
        drop(spool);
        // A tail of zeros (what a power loss can leave behind a file's last block).
        let mut bytes = original[..original.len() - record_len].to_vec();
        bytes.extend(std::iter::repeat_n(0u8, 4096));
        fs::write(&path, &bytes).unwrap();
        let (mut spool, recovery) = Spool::open(dir.path(), big()).unwrap();
        assert_eq!(recovery.events, 2);
        assert_eq!(recovery.truncated[0].discarded, 4096);
        assert_eq!(read_all(&mut spool).len(), 2);
    }

    #[test]
    fn segments_roll_over_and_acked_ones_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let record_len = encode(&event(0)).unwrap().len() as u64;
        // About ten records per segment.
        let seg = SEGMENT_HEADER_LEN + 10 * record_len + record_len / 2;
        let (mut spool, _) = Spool::open(dir.path(), options(1 << 30, seg)).unwrap();
        for i in 0..95 {
            spool.append(&event(i)).unwrap();
        }
        spool.flush().unwrap();
        assert_eq!(segment_files(dir.path()).len(), 10);
        for file in segment_files(dir.path()) {
            assert!(fs::metadata(&file).unwrap().len() <= seg);
        }
        let all = read_all(&mut spool);
        assert_eq!(all.len(), 95);
        // Acknowledge 35: the first three segments go.
        for (_, end) in &all[..35] {
            spool.ack(*end).unwrap();
        }
        assert_eq!(segment_files(dir.path()).len(), 7);
        assert_eq!(
            spool.bytes(),
            segment_files(dir.path())
                .iter()
                .map(|f| fs::metadata(f).unwrap().len())
                .sum::<u64>()
        );
        // Across a reopen too (the shipper persists the cursor every 100 ms; without that,
        // the records acknowledged since the last deleted segment would be sent again).
        spool.persist_cursor().unwrap();
        drop(spool);
        let (mut spool, recovery) = Spool::open(dir.path(), options(1 << 30, seg)).unwrap();
        assert_eq!(recovery.events, 60);
        assert_eq!(recovery.segments, 7);
        let all = read_all(&mut spool);
        assert_eq!(all[0].0, event(35));
        for (_, end) in &all {
            spool.ack(*end).unwrap();
        }
        assert!(spool.is_empty());
        assert_eq!(segment_files(dir.path()).len(), 1);
    }

    #[test]
    fn full_refuses_until_acks_free_space() {
        let dir = tempfile::tempdir().unwrap();
        let record_len = encode(&event(0)).unwrap().len() as u64;
        let seg = SEGMENT_HEADER_LEN + 4 * record_len;
        let max = 4 * seg;
        let (mut spool, _) = Spool::open(dir.path(), options(max, seg)).unwrap();
        let mut accepted = 0;
        let refused = loop {
            match spool.append(&event(accepted)) {
                Ok(_) => accepted += 1,
                Err(e) => break e,
            }
        };
        assert!(matches!(refused, SpoolError::Full { .. }), "{refused}");
        assert_eq!(accepted, 16);
        assert!(spool.bytes() <= max);
        // Full stays full...
        assert!(matches!(
            spool.append(&event(99)),
            Err(SpoolError::Full { .. })
        ));
        // ...until a whole segment is acknowledged and deleted.
        spool.flush().unwrap();
        let all = read_all(&mut spool);
        for (_, end) in &all[..3] {
            spool.ack(*end).unwrap();
        }
        assert!(
            spool.append(&event(99)).is_err(),
            "a partial segment frees nothing"
        );
        spool.ack(all[3].1).unwrap();
        spool.append(&event(99)).unwrap();
        // Shutdown may go over the limit rather than lose what is in memory.
        for i in 100..110 {
            spool.append_unbounded(&event(i)).unwrap();
        }
        assert!(spool.bytes() > max);
    }

    #[test]
    fn one_oversized_record_fits_an_empty_spool() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), options(100, 4096)).unwrap();
        let mut large = event(1);
        large.payload = Bytes::from(vec![b'a'; 500]);
        spool.append(&large).unwrap();
        assert!(matches!(
            spool.append(&event(2)),
            Err(SpoolError::Full { .. })
        ));
        let mut huge = event(3);
        huge.id = "i".repeat(70_000);
        assert!(matches!(
            spool.append_unbounded(&huge),
            Err(SpoolError::TooLarge { .. })
        ));
    }

    #[test]
    fn damaged_cursor_falls_back_without_skipping() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut spool, _) = Spool::open(dir.path(), big()).unwrap();
            for i in 0..10 {
                spool.append(&event(i)).unwrap();
            }
            spool.flush().unwrap();
            let all = read_all(&mut spool);
            for (_, end) in &all[..4] {
                spool.ack(*end).unwrap();
            }
            spool.persist_cursor().unwrap();
        }
        // A cursor between two records moves back to the record it is inside of.
        let cursor_path = dir.path().join(CURSOR_FILE);
        let good = fs::read(&cursor_path).unwrap();
        let mut mid = good.clone();
        let offset = u64::from_le_bytes(mid[8..16].try_into().unwrap()) + 3;
        mid[8..16].copy_from_slice(&offset.to_le_bytes());
        let crc = crc32fast::hash(&mid[..16]);
        mid[16..].copy_from_slice(&crc.to_le_bytes());
        fs::write(&cursor_path, &mid).unwrap();
        let (mut spool, recovery) = Spool::open(dir.path(), big()).unwrap();
        assert!(recovery.cursor_note.is_some());
        assert_eq!(recovery.events, 6);
        assert_eq!(read_all(&mut spool)[0].0, event(4));
        drop(spool);
        // A damaged cursor file: start from the oldest record.
        fs::write(&cursor_path, b"garbage").unwrap();
        let (mut spool, recovery) = Spool::open(dir.path(), big()).unwrap();
        assert!(recovery.cursor_note.is_some());
        assert_eq!(recovery.events, 10);
        assert_eq!(read_all(&mut spool)[0].0, event(0));
    }

    #[test]
    fn foreign_segment_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(segment_path(dir.path(), 3), b"not a spool segment").unwrap();
        let (mut spool, recovery) = Spool::open(dir.path(), big()).unwrap();
        assert_eq!(recovery.quarantined.len(), 1);
        assert!(recovery.quarantined[0].exists());
        spool.append(&event(1)).unwrap();
        spool.flush().unwrap();
        assert_eq!(read_all(&mut spool).len(), 1);
    }

    #[test]
    fn sync_job_covers_written_files_and_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), big()).unwrap();
        // Opening created a segment and a cursor: the directory needs a sync.
        let job = spool.sync_job().unwrap().unwrap();
        assert!(job.dir.is_some());
        job.run().unwrap();
        assert!(spool.sync_job().unwrap().is_none());
        spool.append(&event(1)).unwrap();
        let job = spool.sync_job().unwrap().unwrap();
        assert_eq!(job.files.len(), 1);
        assert!(job.dir.is_none());
        job.run().unwrap();
    }
}
