//! What opening the store makes of its log: which records to apply over redb's
//! checkpoint, which to cut away as the torn tail of a crash, and when to refuse.
//!
//! The records newer than the checkpoint, from both segments in sequence order, are
//! applied while their numbers follow each other. The first missing number is the end:
//! the records after it were written in the same unsynced window as the missing one (no
//! caller heard back about them; a power cut kept some and not others) — unless one of
//! them says, by its `synced` number, that the missing record had been made durable
//! before it was written. Then an acknowledged write is lost: that is corruption, and
//! the store refuses to open with the file and offset, until `aicore store repair`
//! applies what provably precedes the damage and says what it dropped.
//!
//! The checkpoint then moves past every number found, applied or not, so a number is
//! never written twice and a dropped record can never be read again.

use crate::store::Corruption;
use crate::wal::{Logged, Scan};

/// What to do with the log.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Records to apply, in order.
    pub apply: Vec<Logged>,
    /// The checkpoint to record: the highest number found (or the old checkpoint).
    pub checkpoint: u64,
    /// Numbers cut away as a crash's torn tail (never acknowledged).
    pub torn: Vec<u64>,
    /// Numbers dropped by a repair although a later record proves them acknowledged
    /// (or acknowledged records after such a one). Empty unless repairing.
    pub lost: Vec<u64>,
    /// The damage a repair went past.
    pub damage: Option<Corruption>,
}

/// Plans recovery from the segments' scans over redb's `checkpoint`. Without `repair`,
/// damage is an error; with it, the records from the damage on are dropped and listed.
pub(crate) fn plan(scans: Vec<Scan>, checkpoint: u64, repair: bool) -> Result<Plan, Corruption> {
    let mut found: Vec<(usize, Logged)> = Vec::new();
    let mut run_ends = Vec::new();
    let mut paths = Vec::new();
    for (i, scan) in scans.into_iter().enumerate() {
        run_ends.push(scan.run_end);
        paths.push(scan.path);
        found.extend(
            scan.records
                .into_iter()
                .filter(|r| r.seq > checkpoint)
                .map(|r| (i, r)),
        );
    }
    found.sort_by_key(|(_, r)| r.seq);
    let mut plan = Plan {
        checkpoint: found.last().map_or(checkpoint, |(_, r)| r.seq),
        ..Plan::default()
    };
    let mut rest = found.into_iter().peekable();
    let mut last_segment = None;
    while let Some((i, r)) =
        rest.next_if(|(_, r)| r.seq == checkpoint + 1 + plan.apply.len() as u64)
    {
        last_segment = Some(i);
        plan.apply.push(r);
    }
    let gap = checkpoint + 1 + plan.apply.len() as u64;
    let rest: Vec<(usize, Logged)> = rest.collect();
    let proof = rest.iter().find(|(_, r)| r.synced >= gap);
    match proof {
        None => plan.torn = rest.iter().map(|(_, r)| r.seq).collect(),
        Some((j, witness)) => {
            let at = last_segment.unwrap_or(*j);
            let damage = Corruption {
                file: paths[at].clone(),
                offset: Some(run_ends[at]),
                what: format!(
                    "log record {gap} is missing or damaged, but record {} (at offset {} of \
                     {}) was written after it had been acknowledged; records {gap}..={} \
                     cannot be applied",
                    witness.seq,
                    witness.offset,
                    paths[*j].display(),
                    plan.checkpoint,
                ),
            };
            if !repair {
                return Err(damage);
            }
            plan.lost = rest.iter().map(|(_, r)| r.seq).collect();
            plan.damage = Some(damage);
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn rec(seq: u64, synced: u64) -> Logged {
        Logged {
            seq,
            synced,
            offset: seq * 64,
            ops: Vec::new(),
        }
    }

    fn scan(name: &str, records: Vec<Logged>, run_end: u64) -> Scan {
        Scan {
            path: PathBuf::from(name),
            records,
            run_end,
        }
    }

    fn seqs(r: &[Logged]) -> Vec<u64> {
        r.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn consecutive_records_after_the_checkpoint_are_applied_across_segments() {
        let a = scan("a", vec![rec(3, 2), rec(4, 3)], 128);
        let b = scan("b", vec![rec(5, 4), rec(6, 4)], 64);
        let p = plan(vec![a, b], 3, false).unwrap();
        assert_eq!(seqs(&p.apply), vec![4, 5, 6]);
        assert_eq!(p.checkpoint, 6);
        assert!(p.torn.is_empty());
    }

    #[test]
    fn records_after_an_unsynced_gap_are_a_torn_tail() {
        // 6 lost, 7 kept by the cut: both written while 5 was the last durable one.
        let a = scan("a", vec![rec(4, 3), rec(5, 4), rec(7, 5)], 128);
        let p = plan(vec![a], 3, false).unwrap();
        assert_eq!(seqs(&p.apply), vec![4, 5]);
        assert_eq!(p.torn, vec![7]);
        assert_eq!(p.checkpoint, 7, "the dropped number is never used again");
    }

    #[test]
    fn a_lost_acknowledged_record_is_refused_and_repair_says_what_it_drops() {
        // 7 was written after 6 was durable (synced = 6): 6 was acknowledged.
        let a = scan("a", vec![rec(4, 3), rec(5, 4), rec(7, 6), rec(8, 6)], 128);
        let b = scan("b", vec![], 0);
        let err = plan(vec![a, b], 3, false).unwrap_err();
        assert_eq!(err.file, PathBuf::from("a"));
        assert_eq!(err.offset, Some(128));
        assert!(err.what.contains("record 6"), "{err}");
        let a = scan("a", vec![rec(4, 3), rec(5, 4), rec(7, 6), rec(8, 6)], 128);
        let p = plan(vec![a], 3, true).unwrap();
        assert_eq!(seqs(&p.apply), vec![4, 5]);
        assert_eq!(p.lost, vec![7, 8]);
        assert_eq!(p.checkpoint, 8);
        assert!(p.damage.is_some());
    }

    #[test]
    fn records_the_checkpoint_covers_are_ignored() {
        let a = scan("a", vec![rec(1, 0), rec(2, 1), rec(9, 8)], 0);
        let p = plan(vec![a], 8, false).unwrap();
        assert_eq!(seqs(&p.apply), vec![9]);
    }
}
