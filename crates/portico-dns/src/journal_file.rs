//! The zone journal on disk, `zones/<zone>journal` beside the master file: every change to a
//! zone is appended here and fsynced before it is acknowledged, so that a change costs what it
//! changes (a few hundred bytes) instead of a rewrite of the whole zone file. The master file is
//! written only at checkpoints (see `zones.rs`); a start reads the master file and replays the
//! entries after its serial. Knot keeps its journal the same way.
//!
//! The file is a header line, then entries, each framed so that a write cut short (a crash in
//! the middle of an append) is found and dropped on the next open:
//!
//! ```text
//! PORTICO-JOURNAL 1\n
//! [length u32 LE][crc32 of the body u32 LE][body: from u32 LE, to u32 LE, JSON]
//! ```
//!
//! The JSON holds, for each name the change touched, the name's wire key (base64) and everything
//! at the name before and after, as master-file lines (so ALIAS and routed sets, which have no
//! wire form, go through the same reader as the zone file).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use hickory_proto::rr::Name;

use crate::journal::Delta;
use crate::zone::Owner;
use crate::zone_file;

const MAGIC: &[u8] = b"PORTICO-JOURNAL 1\n";
/// An entry larger than this is taken for a damaged length (a change batch is far smaller).
const MAX_ENTRY: usize = 256 << 20;

/// One stored entry: its serials, and its body still encoded (decoded only when needed).
#[derive(Debug, Clone)]
pub struct Frame {
    pub from: u32,
    pub to: u32,
    /// The whole framed entry, as written.
    pub bytes: Vec<u8>,
}

impl Frame {
    pub fn decode(&self, origin: &Name) -> Result<Delta, String> {
        decode(origin, self.from, self.to, &self.bytes[16..])
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct NodeText {
    owner: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    old: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    new: Option<String>,
}

/// A delta as one framed entry.
pub fn encode(origin: &Name, d: &Delta) -> Vec<u8> {
    let text = |key: &Owner, n: &Option<crate::zone::Node>| {
        n.as_ref().map(|n| {
            let mut s = String::new();
            zone_file::export_node(&mut s, origin, key, n);
            s
        })
    };
    let nodes: Vec<NodeText> = d
        .nodes
        .iter()
        .map(|(key, old, new)| NodeText {
            owner: key.to_base64(),
            old: text(key, old),
            new: text(key, new),
        })
        .collect();
    let json = serde_json::to_vec(&nodes).unwrap_or_default();
    let mut body = Vec::with_capacity(8 + json.len());
    body.extend_from_slice(&d.from.to_le_bytes());
    body.extend_from_slice(&d.to.to_le_bytes());
    body.extend_from_slice(&json);
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

fn decode(origin: &Name, from: u32, to: u32, json: &[u8]) -> Result<Delta, String> {
    let nodes: Vec<NodeText> =
        serde_json::from_slice(json).map_err(|e| format!("entry {from}→{to}: {e}"))?;
    let mut d = Delta {
        from,
        to,
        nodes: Vec::with_capacity(nodes.len()),
    };
    for n in nodes {
        let owner = Owner::from_base64(&n.owner)
            .map_err(|e| format!("entry {from}→{to}: owner {:?}: {e}", n.owner))?;
        let node = |t: &Option<String>| match t {
            None => Ok(None),
            Some(t) => zone_file::parse_node(origin, &owner, t)
                .map_err(|e| format!("entry {from}→{to}, {}: {e}", owner.name())),
        };
        d.nodes.push((owner.clone(), node(&n.old)?, node(&n.new)?));
    }
    Ok(d)
}

/// Splits a journal's bytes into entries; the second value is how many bytes are whole
/// entries (after it: a torn or damaged tail, dropped).
pub fn frames(bytes: &[u8]) -> Result<(Vec<Frame>, usize), String> {
    if bytes.is_empty() {
        return Ok((Vec::new(), 0));
    }
    if !bytes.starts_with(MAGIC) {
        return Err("not a Portico zone journal (bad header)".into());
    }
    let mut at = MAGIC.len();
    let mut out = Vec::new();
    while bytes.len() >= at + 8 {
        let len =
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
        let crc = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
        if !(8..=MAX_ENTRY).contains(&len) || bytes.len() < at + 8 + len {
            break;
        }
        let body = &bytes[at + 8..at + 8 + len];
        if crc32fast::hash(body) != crc {
            break;
        }
        let from = u32::from_le_bytes([body[0], body[1], body[2], body[3]]);
        let to = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
        out.push(Frame {
            from,
            to,
            bytes: bytes[at..at + 8 + len].to_vec(),
        });
        at += 8 + len;
    }
    Ok((out, at))
}

/// The entries to replay over a master file at `serial`: those after the entry that ends at
/// `serial`, in order. `None` when the journal does not continue from `serial` (it belongs to
/// another version of the zone).
pub fn after(frames: &[Frame], serial: u32) -> Option<&[Frame]> {
    if frames.is_empty() {
        return Some(frames);
    }
    if let Some(i) = frames.iter().rposition(|f| f.to == serial) {
        let rest = &frames[i + 1..];
        if rest.first().is_none_or(|f| f.from == serial) {
            return Some(rest);
        }
        return None;
    }
    frames
        .iter()
        .position(|f| f.from == serial)
        .map(|i| &frames[i..])
}

/// An open journal, appended to by the zone's writer.
#[derive(Debug)]
pub struct JournalFile {
    path: PathBuf,
    file: File,
    /// Entries in the file, oldest first (for compaction).
    pub frames: Vec<Frame>,
}

impl JournalFile {
    /// Opens (or creates) the journal at `path`, dropping a torn tail left by a crash.
    pub fn open(path: &Path) -> io::Result<JournalFile> {
        let mut bytes = Vec::new();
        match File::open(path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let (frames, good) = if bytes.is_empty() {
            (Vec::new(), 0)
        } else {
            frames(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            })?
        };
        let file = if good == 0 {
            // New, or nothing whole in it: start the file afresh.
            write_file(path, &[MAGIC])?;
            OpenOptions::new().append(true).open(path)?
        } else {
            let f = OpenOptions::new().append(true).open(path)?;
            if good < bytes.len() {
                tracing::warn!(journal = %path.display(), dropped = bytes.len() - good, "zone journal ends in an incomplete entry (a write cut short): dropped");
                f.set_len(good as u64)?;
                f.sync_all()?;
            }
            f
        };
        Ok(JournalFile {
            path: path.to_path_buf(),
            file,
            frames,
        })
    }

    /// Appends one entry and waits until it is on disk.
    pub fn append(&mut self, frame: Frame) -> io::Result<()> {
        self.file.write_all(&frame.bytes)?;
        self.file.sync_data()?;
        self.frames.push(frame);
        Ok(())
    }

    /// After a checkpoint at `serial`: keeps the entries after it (none were in the checkpoint)
    /// and up to `keep` before it (for IXFR), written to a new file that replaces this one.
    pub fn compact(&mut self, serial: u32, keep: usize) -> io::Result<()> {
        let cut = self
            .frames
            .iter()
            .rposition(|f| f.to == serial)
            .map_or(0, |i| i + 1);
        let start = cut.saturating_sub(keep);
        if start == 0 {
            return Ok(());
        }
        let kept: Vec<Frame> = self.frames.split_off(start);
        let mut parts: Vec<&[u8]> = vec![MAGIC];
        parts.extend(kept.iter().map(|f| &f.bytes[..]));
        write_file(&self.path, &parts)?;
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.frames = kept;
        Ok(())
    }

    /// Entries since the one ending at `serial` (what a checkpoint at `serial` leaves to replay).
    pub fn since(&self, serial: u32) -> usize {
        self.frames
            .iter()
            .rposition(|f| f.to == serial)
            .map_or(self.frames.len(), |i| self.frames.len() - i - 1)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads a journal without changing it (a torn tail is left for the writer to drop).
pub fn read(path: &Path) -> io::Result<Vec<Frame>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    frames(&bytes).map(|(f, _)| f).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })
}

/// Writes `parts` as the whole file at `path`: temp file, fsync, rename, fsync of the directory.
fn write_file(path: &Path, parts: &[&[u8]]) -> io::Result<()> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut all = Vec::with_capacity(total);
    for p in parts {
        all.extend_from_slice(p);
    }
    portico_config::files::write_atomic(path, &all, 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zone::Zone;

    fn zone(text: &str) -> Zone {
        let mut z = Zone::new(&Name::from_ascii("example.com.").unwrap());
        zone_file::parse_into(&mut z, text, 300).unwrap();
        z
    }

    const BASE: &str = "@ 300 IN SOA ns1 hostmaster 5 7200 900 1209600 300\n@ 300 IN NS ns1\nns1 300 IN A 192.0.2.1\n";

    #[test]
    fn entries_round_trip_and_a_torn_tail_is_dropped() {
        let old = zone(BASE);
        let mut new = old.clone();
        new.track();
        let name = Name::from_ascii("_acme-challenge.example.com.").unwrap();
        zone_file::parse_into(
            &mut new,
            "_acme-challenge 60 IN TXT \"token\"\nw 60 IN ALIAS listener:https\n",
            300,
        )
        .unwrap();
        new.set_serial(6);
        let d = Delta::between(&old, &new);
        assert!(d.nodes.iter().any(|(o, _, _)| o.name() == name));
        let origin = old.origin.clone();
        let bytes = encode(&origin, &d);
        let mut file = MAGIC.to_vec();
        file.extend_from_slice(&bytes);
        let (fr, good) = frames(&file).unwrap();
        assert_eq!((fr.len(), good), (1, file.len()));
        assert_eq!(fr[0].decode(&origin).unwrap(), d);
        let mut replayed = old.clone();
        fr[0].decode(&origin).unwrap().apply(&mut replayed);
        assert!(!replayed.differs_from(&new) && replayed == new);
        // A crash in the middle of the next append: the whole entry before it stays.
        let mut torn = file.clone();
        torn.extend_from_slice(&bytes[..bytes.len() / 2]);
        let (fr, good) = frames(&torn).unwrap();
        assert_eq!((fr.len(), good), (1, file.len()));
        // A flipped byte in the body is caught by the checksum.
        let mut bad = file.clone();
        let last = bad.len() - 3;
        bad[last] ^= 0x20;
        assert_eq!(frames(&bad).unwrap().0.len(), 0);
    }

    #[test]
    fn replay_starts_after_the_master_files_serial() {
        let f = |from, to| Frame {
            from,
            to,
            bytes: Vec::new(),
        };
        let j = [f(1, 2), f(2, 3), f(3, 4)];
        assert_eq!(after(&j, 2).map(|r| r.len()), Some(2));
        assert_eq!(after(&j, 4).map(|r| r.len()), Some(0));
        assert_eq!(after(&j, 1).map(|r| r.len()), Some(3));
        assert!(after(&j, 9).is_none(), "a journal of another zone version");
        assert_eq!(after(&[], 9).map(|r| r.len()), Some(0));
    }
}
