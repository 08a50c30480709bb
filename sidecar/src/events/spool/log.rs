//! The spool's on-disk log: append-only segment files `<n>.seg` and a `cursor` file.
//!
//! A record is `len: u32 LE | checksum: u32 LE | body`, the body being
//! `subject \n id \n envelope`. Appends are fsynced (`sync_data`) before the publish
//! they carry is answered, so an accepted event survives a crash of the sidecar or the
//! node. The cursor (segment, offset of the first unsent record) is replaced by rename
//! and NOT fsynced: after a crash it can lag, and the records resent from there carry
//! the same `Nats-Msg-Id`, which JetStream's duplicate window drops. A torn record at the
//! end (crash mid-write) fails its length or checksum and is cut off at open.

use super::super::envelope::Outgoing;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// A segment is closed and a new one started past this size, so sent events free disk.
use streamgate_crds::contract::spool::SEGMENT_BYTES;
const HEADER: u64 = 8;

/// Where the next unsent record starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

/// One unsent record and the position just after it.
#[derive(Debug)]
pub struct Record {
    pub event: Outgoing,
    pub next: Position,
    pub size: u64,
}

pub struct Log {
    dir: PathBuf,
    /// Segments from the cursor's on, ascending.
    segments: Vec<u64>,
    cursor: Position,
    writer: Option<(u64, File, u64)>,
    /// A failed append could not be rolled back in this segment: the next append starts
    /// a new one, so no acknowledged record ever follows torn bytes in a segment (which
    /// recovery would cut off with them).
    sealed: Option<u64>,
    pending_bytes: u64,
    /// How many records `pending_bytes` holds (what a shutdown reports as unsent).
    pending_records: u64,
    _lock: File,
}

impl Log {
    /// Opens (or creates) the spool in `dir`, taking an exclusive lock so two sidecars
    /// never share one; counts what is still unsent and cuts off a torn tail.
    pub fn open(dir: &Path) -> io::Result<Log> {
        std::fs::create_dir_all(dir)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("LOCK"))?;
        lock.try_lock().map_err(|_| {
            io::Error::other(format!("{} is in use by another sidecar", dir.display()))
        })?;
        let mut segments: Vec<u64> = std::fs::read_dir(dir)?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".seg")?.parse().ok())
            .collect();
        segments.sort_unstable();
        let start = Position {
            segment: segments.first().copied().unwrap_or(0),
            offset: 0,
        };
        // A cursor into a segment that is gone (never written) starts from the oldest.
        let cursor = read_cursor(dir)
            .filter(|c| segments.contains(&c.segment))
            .unwrap_or(start);
        for old in segments.iter().filter(|s| **s < cursor.segment) {
            let _ = std::fs::remove_file(segment_path(dir, *old));
        }
        segments.retain(|s| *s >= cursor.segment);
        let mut log = Log {
            dir: dir.to_path_buf(),
            segments,
            cursor,
            writer: None,
            sealed: None,
            pending_bytes: 0,
            pending_records: 0,
            _lock: lock,
        };
        log.recover()?;
        Ok(log)
    }

    pub fn pending_bytes(&self) -> u64 {
        self.pending_bytes
    }

    pub fn pending_records(&self) -> u64 {
        self.pending_records
    }

    /// Size a record of `event` takes on disk.
    pub fn record_size(event: &Outgoing) -> u64 {
        HEADER + (event.subject.len() + event.id.len() + 2 + event.payload.len()) as u64
    }

    /// Appends every event and fsyncs once. On failure (disk full, I/O error) nothing of
    /// the batch stays: the segment is cut back to its last good size, or, when even that
    /// fails, sealed so later appends go to a new one. Either way the caller answers the
    /// app with an error, never "spooled", and later appends stay readable.
    pub fn append(&mut self, events: &[Outgoing]) -> io::Result<()> {
        let buffer = encode(events);
        let (segment, file, size) = self.writer()?;
        let written = file.write_all(&buffer).and_then(|()| file.sync_data());
        if let Err(error) = written {
            let (segment, good) = (*segment, *size);
            let rolled_back = file.set_len(good).and_then(|()| file.sync_data());
            self.writer = None;
            if let Err(e) = rolled_back {
                tracing::warn!(segment, error = %e, "spool: cannot roll back a failed append; sealing the segment");
                self.sealed = Some(segment);
            }
            return Err(error);
        }
        *size += buffer.len() as u64;
        self.pending_bytes += buffer.len() as u64;
        self.pending_records += events.len() as u64;
        Ok(())
    }

    /// Up to `max` unsent records from the cursor on, in order.
    pub fn read(&self, max: usize) -> io::Result<Vec<Record>> {
        let mut records = Vec::new();
        let mut at = self.cursor;
        let from = at.segment;
        for &segment in self.segments.iter().filter(|s| **s >= from) {
            if segment != at.segment {
                at = Position { segment, offset: 0 };
            }
            let mut file = BufReader::new(File::open(segment_path(&self.dir, segment))?);
            file.seek(SeekFrom::Start(at.offset))?;
            while records.len() < max {
                let Some((event, size)) = read_record(&mut file)? else {
                    break;
                };
                at.offset += size;
                records.push(Record {
                    event,
                    next: at,
                    size,
                });
            }
            if records.len() >= max {
                break;
            }
        }
        Ok(records)
    }

    /// Marks everything before `next` as sent: moves the cursor, frees `bytes` of
    /// `records`, and deletes segments left wholly behind.
    pub fn commit(&mut self, next: Position, bytes: u64, records: u64) -> io::Result<()> {
        self.cursor = next;
        self.pending_bytes = self.pending_bytes.saturating_sub(bytes);
        self.pending_records = self.pending_records.saturating_sub(records);
        let tmp = self.dir.join("cursor.tmp");
        std::fs::write(&tmp, format!("{} {}\n", next.segment, next.offset))?;
        std::fs::rename(&tmp, self.dir.join("cursor"))?;
        let behind: Vec<u64> = self
            .segments
            .iter()
            .copied()
            .filter(|s| *s < next.segment)
            .collect();
        for segment in behind {
            std::fs::remove_file(segment_path(&self.dir, segment))?;
        }
        self.segments.retain(|s| *s >= next.segment);
        Ok(())
    }

    /// The segment appends go to, rolling over to a new one when it is full.
    fn writer(&mut self) -> io::Result<&mut (u64, File, u64)> {
        let has_room = |size: u64| size < SEGMENT_BYTES;
        if self
            .writer
            .as_ref()
            .is_some_and(|(_, _, size)| has_room(*size))
        {
            return Ok(self.writer.as_mut().expect("checked above"));
        }
        let target = match (self.writer.as_ref(), self.segments.last()) {
            // At open or after a rolled-back append: keep appending to the last segment
            // while it has room, unless it was sealed.
            (None, Some(&last))
                if self.sealed != Some(last)
                    && has_room(std::fs::metadata(segment_path(&self.dir, last))?.len()) =>
            {
                last
            }
            (_, Some(&last)) => last + 1,
            (_, None) => self.cursor.segment,
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(segment_path(&self.dir, target))?;
        let size = file.metadata()?.len();
        if !self.segments.contains(&target) {
            self.segments.push(target);
            sync_dir(&self.dir)?;
        }
        Ok(self.writer.insert((target, file, size)))
    }

    /// Counts unsent bytes and truncates each segment at its first bad record.
    fn recover(&mut self) -> io::Result<()> {
        for &segment in &self.segments {
            let path = segment_path(&self.dir, segment);
            let mut file = BufReader::new(File::open(&path)?);
            let start = if segment == self.cursor.segment {
                self.cursor.offset
            } else {
                0
            };
            file.seek(SeekFrom::Start(start))?;
            let mut good = start;
            while let Some((_, size)) = read_record(&mut file)? {
                good += size;
                self.pending_records += 1;
            }
            self.pending_bytes += good - start;
            if std::fs::metadata(&path)?.len() > good {
                tracing::warn!(segment, offset = good, "spool: cutting off a torn record");
                OpenOptions::new().write(true).open(&path)?.set_len(good)?;
            }
        }
        Ok(())
    }
}

/// The records of `events`, one after the other, as they go on disk.
fn encode(events: &[Outgoing]) -> Vec<u8> {
    let mut buffer = Vec::new();
    for event in events {
        let mut body = Vec::with_capacity(Log::record_size(event) as usize);
        body.extend_from_slice(event.subject.as_bytes());
        body.push(b'\n');
        body.extend_from_slice(event.id.as_bytes());
        body.push(b'\n');
        body.extend_from_slice(&event.payload);
        buffer.extend_from_slice(&(body.len() as u32).to_le_bytes());
        buffer.extend_from_slice(&checksum(&body).to_le_bytes());
        buffer.extend_from_slice(&body);
    }
    buffer
}

/// The next record, or `None` at the end or at a torn or corrupt record.
fn read_record(file: &mut impl Read) -> io::Result<Option<(Outgoing, u64)>> {
    let mut header = [0u8; HEADER as usize];
    if !read_full(file, &mut header)? {
        return Ok(None);
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let sum = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len > 64 << 20 {
        return Ok(None);
    }
    let mut body = vec![0u8; len];
    if !read_full(file, &mut body)? || checksum(&body) != sum {
        return Ok(None);
    }
    let mut parts = body.splitn(3, |b| *b == b'\n');
    let (Some(subject), Some(id), Some(payload)) = (parts.next(), parts.next(), parts.next())
    else {
        return Ok(None);
    };
    let event = Outgoing {
        subject: String::from_utf8_lossy(subject).into_owned(),
        id: String::from_utf8_lossy(id).into_owned(),
        payload: bytes::Bytes::copy_from_slice(payload),
    };
    Ok(Some((event, HEADER + len as u64)))
}

/// Fills `buf`; false at a clean or torn end of file.
fn read_full(file: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => return Ok(false),
            n => filled += n,
        }
    }
    Ok(true)
}

fn read_cursor(dir: &Path) -> Option<Position> {
    let text = std::fs::read_to_string(dir.join("cursor")).ok()?;
    let (segment, offset) = text.trim().split_once(' ')?;
    Some(Position {
        segment: segment.parse().ok()?,
        offset: offset.parse().ok()?,
    })
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}.seg"))
}

/// A new segment's directory entry must survive a crash as well as its records.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// FNV-1a: enough to tell a torn or garbled record from a whole one.
fn checksum(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: usize) -> Outgoing {
        Outgoing {
            subject: "streamgate.a.b".into(),
            id: format!("id-{n}"),
            payload: format!("{{\"n\":{n}}}").into_bytes().into(),
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sg-spool-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn records_come_back_in_order_across_reopen_and_commit() {
        let dir = temp_dir("order");
        {
            let mut log = Log::open(&dir).unwrap();
            log.append(&(0..5).map(event).collect::<Vec<_>>()).unwrap();
            let first = log.read(2).unwrap();
            assert_eq!(
                first
                    .iter()
                    .map(|r| r.event.id.as_str())
                    .collect::<Vec<_>>(),
                ["id-0", "id-1"]
            );
            let bytes = first.iter().map(|r| r.size).sum();
            log.commit(first[1].next, bytes, 2).unwrap();
            assert_eq!(log.pending_records(), 3);
        }
        let mut log = Log::open(&dir).unwrap();
        let rest = log.read(10).unwrap();
        assert_eq!(
            rest.iter().map(|r| r.event.id.as_str()).collect::<Vec<_>>(),
            ["id-2", "id-3", "id-4"]
        );
        assert_eq!(
            log.pending_bytes(),
            rest.iter().map(|r| r.size).sum::<u64>()
        );
        assert_eq!(
            log.pending_records(),
            3,
            "recovery counts the unsent records"
        );
        log.append(&[event(5)]).unwrap();
        assert_eq!(log.pending_records(), 4);
        assert_eq!(log.read(10).unwrap().len(), 4);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_a_second_opener_is_refused() {
        let dir = temp_dir("torn");
        {
            let mut log = Log::open(&dir).unwrap();
            log.append(&[event(0), event(1)]).unwrap();
            assert!(Log::open(&dir).is_err(), "the spool is locked");
        }
        let seg = segment_path(&dir, 0);
        let len = std::fs::metadata(&seg).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let mut log = Log::open(&dir).unwrap();
        let records = log.read(10).unwrap();
        assert_eq!(records.len(), 1);
        log.append(&[event(2)]).unwrap();
        let ids: Vec<String> = log
            .read(10)
            .unwrap()
            .into_iter()
            .map(|r| r.event.id)
            .collect();
        assert_eq!(ids, ["id-0", "id-2"]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_failed_append_leaves_nothing_behind_and_later_appends_stay_readable() {
        let dir = temp_dir("full");
        Log::open(&dir).unwrap().append(&[event(0)]).unwrap();
        // The next segment is a full disk: every write to it fails with ENOSPC, and it
        // cannot even be truncated back.
        std::os::unix::fs::symlink("/dev/full", segment_path(&dir, 1)).unwrap();
        let mut log = Log::open(&dir).unwrap();
        let error = log.append(&[event(1)]).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc_enospc()), "{error}");
        log.append(&[event(2)]).unwrap();
        let ids = |log: &Log| -> Vec<String> {
            log.read(10)
                .unwrap()
                .into_iter()
                .map(|r| r.event.id)
                .collect()
        };
        assert_eq!(
            ids(&log),
            ["id-0", "id-2"],
            "the refused event is not there"
        );
        drop(log);
        let log = Log::open(&dir).unwrap();
        assert_eq!(
            ids(&log),
            ["id-0", "id-2"],
            "nothing accepted is lost at reopen"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// ENOSPC on Linux.
    fn libc_enospc() -> i32 {
        28
    }
}
