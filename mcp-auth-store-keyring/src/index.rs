//! The namespace index, sharded over several keyring items so that it is not bounded by what one
//! item holds (32 767 bytes in the kernel keyring, a few hundred record keys).
//!
//! Layout: shard 0 is the item `index`, shard `i > 0` the item `index.<i>`; each is a JSON list
//! of record keys. While there is more than one shard, shard 0 also lists the marker
//! `#shards=<count>` (not a record key: record keys contain a `/`), and shards `1..count` must
//! all exist; a missing or undecodable one makes the whole index damaged (rebuilt from the
//! keyring's own search). Items past the count are leftovers and ignored.
//!
//! Every change is planned here, sizes checked, before the first item is written, and applied
//! (under the namespace lock) in an order after which a crash at any step leaves an index that
//! still lists every record:
//! - a record key is added to one shard only (the first with room, or a new shard), and never
//!   moves between shards afterwards: one item write;
//! - a new shard is written before shard 0 counts it, and shard 0 stops counting a shard
//!   before it is deleted;
//! - a full rewrite (after a rebuild) deletes shard 0 first and writes it last, so until it is
//!   done the index reads as missing, and is rebuilt again.

use std::collections::BTreeSet;

/// The user of shard 0; record users always contain a `/`, so it never names a record.
pub(crate) const INDEX_USER: &str = "index";

/// Shard 0's entry giving the number of shards (when more than one).
const MARKER: &str = "#shards=";

/// Room kept free in shard 0 for the marker, whatever the count: `"#shards=<20 digits>",`.
const MARKER_RESERVE: usize = 32;

/// More shards than this is a damaged marker.
const MAX_SHARDS: usize = 1 << 20;

/// The keyring user of shard `i`.
pub(crate) fn shard_user(i: usize) -> String {
    if i == 0 {
        INDEX_USER.to_owned()
    } else {
        format!("{INDEX_USER}.{i}")
    }
}

/// Decodes shard 0: its record keys and the number of shards; `None` when damaged.
pub(crate) fn parse_first(raw: &[u8]) -> Option<(BTreeSet<String>, usize)> {
    let mut members: BTreeSet<String> = serde_json::from_slice(raw).ok()?;
    let markers: Vec<String> = members
        .iter()
        .filter(|m| m.starts_with(MARKER))
        .cloned()
        .collect();
    let count = match markers.as_slice() {
        [] => 1,
        [marker] => {
            let count: usize = marker[MARKER.len()..].parse().ok()?;
            if !(2..=MAX_SHARDS).contains(&count) {
                return None;
            }
            members.remove(marker);
            count
        }
        _ => return None,
    };
    Some((members, count))
}

/// Decodes shard `i > 0`; `None` when damaged.
pub(crate) fn parse_other(raw: &[u8]) -> Option<BTreeSet<String>> {
    let members: BTreeSet<String> = serde_json::from_slice(raw).ok()?;
    (!members.iter().any(|m| m.starts_with(MARKER))).then_some(members)
}

fn encode(i: usize, members: &BTreeSet<String>, count: usize) -> Vec<u8> {
    let result = if i == 0 && count > 1 {
        let mut with_marker = members.clone();
        with_marker.insert(format!("{MARKER}{count}"));
        serde_json::to_vec(&with_marker)
    } else {
        serde_json::to_vec(members)
    };
    // A set of strings always serialises.
    result.unwrap_or_default()
}

fn json_len(members: &BTreeSet<String>) -> usize {
    serde_json::to_vec(members).map_or(usize::MAX, |v| v.len())
}

fn entry_len(member: &str) -> usize {
    serde_json::to_string(member).map_or(usize::MAX, |s| s.len())
}

/// How many bytes of record keys shard `i` may hold, under an item limit of `limit`.
fn capacity(i: usize, limit: Option<usize>) -> usize {
    match limit {
        None => usize::MAX,
        Some(limit) if i == 0 => limit.saturating_sub(MARKER_RESERVE),
        Some(limit) => limit,
    }
}

/// Whether `member` fits into `shard` (of size `size`) as shard `i`.
fn fits(i: usize, size: usize, shard_empty: bool, member: &str, limit: Option<usize>) -> bool {
    let grown = size
        .saturating_add(entry_len(member))
        .saturating_add(usize::from(!shard_empty));
    grown <= capacity(i, limit)
}

/// A record key too long for even an empty shard (not possible for keys the kernel accepts as
/// item names, which are below 4 KiB).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct MemberTooLarge {
    /// The encoded size of a shard holding only this key.
    pub(crate) size: usize,
    /// The shard's capacity.
    pub(crate) limit: usize,
}

/// One step of a planned change, in order.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Write shard `.0` with the value `.1`.
    Write(usize, Vec<u8>),
    /// Delete shard `.0` (absent is fine).
    Delete(usize),
}

/// The item writes and deletions of one change.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) steps: Vec<Step>,
    /// The index is now empty (and shard 0 deleted): the namespace holds no record.
    pub(crate) emptied: bool,
}

/// Plans adding `add` to and removing `remove` from the stored `shards` (shard 0 first; empty
/// when there is no index), without moving any other record key between shards.
pub(crate) fn plan_change(
    shards: &[BTreeSet<String>],
    add: Option<&str>,
    remove: &BTreeSet<String>,
    limit: Option<usize>,
) -> Result<Plan, MemberTooLarge> {
    let old_count = shards.len();
    let mut new: Vec<BTreeSet<String>> = shards.to_vec();
    let mut changed = vec![false; old_count];
    for (shard, changed) in new.iter_mut().zip(changed.iter_mut()) {
        let before = shard.len();
        shard.retain(|m| !remove.contains(m));
        *changed = shard.len() != before;
    }
    if let Some(add) = add
        && !remove.contains(add)
        && !new.iter().any(|s| s.contains(add))
    {
        let slot = new
            .iter()
            .enumerate()
            .position(|(i, s)| fits(i, json_len(s), s.is_empty(), add, limit));
        let i = match slot {
            Some(i) => i,
            None => {
                let i = new.len();
                let size = 2 + entry_len(add);
                if !fits(i, 2, true, add, limit) {
                    return Err(MemberTooLarge {
                        size,
                        limit: capacity(i, limit),
                    });
                }
                new.push(BTreeSet::new());
                changed.push(true);
                i
            }
        };
        new[i].insert(add.to_owned());
        changed[i] = true;
    }
    if !changed.iter().any(|c| *c) {
        return Ok(Plan::default());
    }
    let new_count = new.iter().rposition(|s| !s.is_empty()).map_or(0, |i| i + 1);
    let mut steps = Vec::new();
    if new_count == 0 {
        // Shard 0 first: from then on the namespace reads as empty, the rest are leftovers.
        steps.push(Step::Delete(0));
        steps.extend((1..old_count).rev().map(Step::Delete));
        return Ok(Plan {
            steps,
            emptied: true,
        });
    }
    // A new shard before shard 0 counts it.
    for (i, shard) in new
        .iter()
        .enumerate()
        .take(new_count)
        .skip(old_count.max(1))
    {
        steps.push(Step::Write(i, encode(i, shard, new_count)));
    }
    for i in 1..old_count.min(new_count) {
        if changed[i] {
            steps.push(Step::Write(i, encode(i, &new[i], new_count)));
        }
    }
    if changed[0] || new_count != old_count {
        steps.push(Step::Write(0, encode(0, &new[0], new_count)));
    }
    // Shard 0 no longer counts these.
    steps.extend((new_count..old_count).rev().map(Step::Delete));
    Ok(Plan {
        steps,
        emptied: false,
    })
}

/// Plans writing `members` as a new index over whatever is stored, where shard items
/// `1..existing` may exist.
pub(crate) fn plan_rewrite(
    members: &BTreeSet<String>,
    existing: usize,
    limit: Option<usize>,
) -> Result<Plan, MemberTooLarge> {
    let mut shards: Vec<BTreeSet<String>> = Vec::new();
    let mut current = BTreeSet::new();
    let mut size = 2;
    for member in members {
        let i = shards.len();
        if !fits(i, size, current.is_empty(), member, limit) {
            if current.is_empty() || !fits(i + 1, 2, true, member, limit) {
                return Err(MemberTooLarge {
                    size: 2 + entry_len(member),
                    limit: capacity(i + usize::from(!current.is_empty()), limit),
                });
            }
            shards.push(std::mem::take(&mut current));
            size = 2;
        }
        size += entry_len(member) + usize::from(!current.is_empty());
        current.insert(member.clone());
    }
    if !current.is_empty() {
        shards.push(current);
    }
    let count = shards.len();
    // Shard 0 first and last: until it is written again the index reads as missing.
    let mut steps = vec![Step::Delete(0)];
    if count == 0 {
        steps.extend((1..existing).rev().map(Step::Delete));
        return Ok(Plan {
            steps,
            emptied: true,
        });
    }
    for (i, shard) in shards.iter().enumerate().skip(1) {
        steps.push(Step::Write(i, encode(i, shard, count)));
    }
    steps.push(Step::Write(0, encode(0, &shards[0], count)));
    steps.extend((count..existing).rev().map(Step::Delete));
    Ok(Plan {
        steps,
        emptied: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: usize) -> String {
        format!("tokens/issuer-{n:04}.resource-{n:04}")
    }

    /// Applies `plan` to an in-memory keyring of shard items.
    fn apply(items: &mut Vec<Option<Vec<u8>>>, plan: &Plan, upto: usize) {
        for step in plan.steps.iter().take(upto) {
            match step {
                Step::Write(i, value) => {
                    if items.len() <= *i {
                        items.resize(*i + 1, None);
                    }
                    items[*i] = Some(value.clone());
                }
                Step::Delete(i) => {
                    if let Some(item) = items.get_mut(*i) {
                        *item = None;
                    }
                }
            }
        }
    }

    /// Reads the items as the store does: `None` for a missing or damaged index.
    fn load(items: &[Option<Vec<u8>>]) -> Option<Vec<BTreeSet<String>>> {
        let (first, count) = parse_first(items.first()?.as_ref()?)?;
        let mut shards = vec![first];
        for i in 1..count {
            shards.push(parse_other(items.get(i)?.as_ref()?)?);
        }
        Some(shards)
    }

    fn union(shards: &[BTreeSet<String>]) -> BTreeSet<String> {
        shards.iter().flatten().cloned().collect()
    }

    #[test]
    fn grows_into_shards_each_under_the_limit_and_shrinks_back() {
        let limit = Some(600);
        let mut items = Vec::new();
        let mut expected = BTreeSet::new();
        for n in 0..100 {
            let shards = load(&items).unwrap_or_default();
            let plan = plan_change(&shards, Some(&key(n)), &BTreeSet::new(), limit).unwrap();
            // The added key lands in exactly one item write, plus at most shard 0's count.
            assert!(plan.steps.len() <= 2, "{plan:?}");
            apply(&mut items, &plan, usize::MAX);
            expected.insert(key(n));
            assert_eq!(union(&load(&items).unwrap()), expected);
        }
        assert!(load(&items).unwrap().len() > 5);
        for item in items.iter().flatten() {
            assert!(item.len() <= 600, "{}", item.len());
        }
        for n in (0..100).rev() {
            let shards = load(&items).unwrap();
            let remove = BTreeSet::from([key(n)]);
            let plan = plan_change(&shards, None, &remove, limit).unwrap();
            apply(&mut items, &plan, usize::MAX);
            expected.remove(&key(n));
            if n == 0 {
                assert!(plan.emptied);
                assert!(items.iter().all(Option::is_none), "leftover shard items");
            } else {
                assert_eq!(union(&load(&items).unwrap()), expected);
            }
        }
    }

    /// Stopping after any step of any change leaves an index that lists every record key that
    /// was there before and is still meant to be (removed ones may linger).
    #[test]
    fn a_crash_after_any_step_loses_no_key() {
        let limit = Some(400);
        let mut items = Vec::new();
        let mut kept = BTreeSet::new();
        for n in 0..60 {
            let shards = load(&items).unwrap_or_default();
            let remove: BTreeSet<String> = if n % 7 == 6 {
                kept.iter().step_by(4).cloned().collect()
            } else {
                BTreeSet::new()
            };
            let plan = plan_change(&shards, Some(&key(n)), &remove, limit).unwrap();
            for upto in 0..plan.steps.len() {
                let mut crashed = items.clone();
                apply(&mut crashed, &plan, upto);
                // No shard 0 is a namespace without records (or a lost index, rebuilt).
                let listed = match crashed.first() {
                    None | Some(None) => BTreeSet::new(),
                    Some(Some(_)) => union(&load(&crashed).expect("a crash damaged the index")),
                };
                let survivors: BTreeSet<String> = kept.difference(&remove).cloned().collect();
                assert!(listed.is_superset(&survivors), "step {upto} of {plan:?}");
            }
            apply(&mut items, &plan, usize::MAX);
            kept.retain(|k| !remove.contains(k));
            kept.insert(key(n));
            assert_eq!(union(&load(&items).unwrap()), kept);
        }
        // A rewrite: until its last step the index reads as missing (so it is rebuilt again).
        let plan = plan_rewrite(&kept, items.len(), limit).unwrap();
        for upto in 1..plan.steps.len() {
            let mut crashed = items.clone();
            apply(&mut crashed, &plan, upto);
            assert!(load(&crashed).is_none(), "step {upto} of {plan:?}");
        }
        apply(&mut items, &plan, usize::MAX);
        assert_eq!(union(&load(&items).unwrap()), kept);
    }

    #[test]
    fn without_a_limit_there_is_one_shard() {
        let members: BTreeSet<String> = (0..2000).map(key).collect();
        let plan = plan_rewrite(&members, 0, None).unwrap();
        assert_eq!(plan.steps.len(), 2);
        let plan = plan_change(&[members], Some(&key(5000)), &BTreeSet::new(), None).unwrap();
        assert!(matches!(plan.steps.as_slice(), [Step::Write(0, _)]));
    }

    #[test]
    fn damaged_markers_and_oversized_keys() {
        assert!(parse_first(br##"["#shards=1"]"##).is_none());
        assert!(parse_first(br##"["#shards=x"]"##).is_none());
        assert!(parse_first(br##"["#shards=2", "#shards=3"]"##).is_none());
        assert_eq!(parse_first(br##"["#shards=3","a/b"]"##).unwrap().1, 3);
        assert!(parse_other(br##"["#shards=3"]"##).is_none());
        let long = "x/".repeat(300);
        assert!(plan_change(&[], Some(&long), &BTreeSet::new(), Some(500)).is_err());
        assert!(plan_rewrite(&BTreeSet::from([long]), 0, Some(500)).is_err());
    }
}
