//! Subset Difference broadcast revocation (Naor, Naor and Lotspiech,
//! CRYPTO 2001, section 3.2): the tree forest, the label PRG, the headend's
//! labels and cover, and the card's key derivation. No I/O.
//!
//! * A [`Forest`] is a row of complete binary trees of depth `d`, nodes
//!   numbered as a heap ([`Node`]: root 1, children `2v` and `2v + 1`,
//!   leaves `2^d ..= 2^(d+1) − 1`). Card number `n` sits at
//!   ([`CardAddress`]) tree `n >> d`, leaf `n mod 2^d`: leaves are handed out
//!   in order, so the unassigned ones are one range at the end.
//! * [`Subset::Difference`] `S(i, j)` is the leaves under `i` but not under
//!   its proper descendant `j`; [`Subset::Whole`] is a whole tree.
//! * The PRG `G(x) = (G_L(x), G_M(x), G_R(x))` is three HKDF-Expand
//!   (RFC 5869) outputs of 32 bytes with `PRK = x`, one HMAC-SHA256 each:
//!   `G_X(x) = HMAC-SHA256(x, 01 ‖ "iodoform/v1/sd-X" ‖ 01)` with X = `L`,
//!   `M` or `R`.
//! * `LABEL(i, j)` walks from `i` down to `j` with `G_L` (left step) and
//!   `G_R` (right step); the key of `S(i, j)` is `G_M(LABEL(i, j))`.
//!
//! `docs/PROTOCOL.md` section 2.3 is the normative text; the vectors in
//! `tests/vectors/sd.json` pin every derivation.

use crate::codec::InvalidMessage;
use crate::crypto::{hkdf32, KDF_VERSION};
use crate::secret::{SdLabel, SdMaster, SubsetKey};
use ring::hmac;
use thiserror::Error;

/// Tree depth by default: 2^18 = 262,144 leaves per tree.
pub const DEFAULT_DEPTH: u8 = 18;
/// The deepest tree supported: a card then holds 300 labels + 1 key.
pub const MAX_DEPTH: u8 = 24;
/// Trees a forest may have (the wire's tree field is 24 bits).
pub const MAX_TREES: u32 = 1 << 24;
/// Length of a subset's id on the wire.
pub const SUBSET_ID_LEN: usize = 8;

/// The `info` strings of the three PRG outputs (after the version byte).
const INFO_L: &[u8] = b"iodoform/v1/sd-L";
const INFO_M: &[u8] = b"iodoform/v1/sd-M";
const INFO_R: &[u8] = b"iodoform/v1/sd-R";
/// HKDF salt of a node's seed `LABEL(i)` from the forest master secret.
pub const LABEL_SALT: &[u8] = b"iodoform/v1/sd-label";
/// HKDF salt of a tree's "nobody excluded" key from the master secret.
pub const WHOLE_SALT: &[u8] = b"iodoform/v1/sd-whole";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SdError {
    #[error("tree depth {0} is outside 1..={MAX_DEPTH}; choose a depth in that range")]
    Depth(u8),
    #[error("card number {0} is past the last tree of the forest ({MAX_TREES} trees); use a deeper tree")]
    CardNumber(u64),
    #[error("card address (tree {tree}, leaf {leaf}) is not in a forest of depth {depth}; check the address")]
    Address { tree: u32, leaf: u32, depth: u8 },
    #[error("{got} labels given, a card of depth {depth} holds {want}; deliver all of them")]
    LabelCount { got: usize, want: usize, depth: u8 },
}

/// A node of one tree, numbered as a heap: the root is 1, the children of
/// `v` are `2v` and `2v + 1`. Never 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Node(u32);

impl Node {
    pub const ROOT: Node = Node(1);

    /// A node index; `None` for 0 or one deeper than [`MAX_DEPTH`].
    pub fn new(v: u32) -> Option<Node> {
        (v != 0 && v >> (MAX_DEPTH + 1) == 0).then_some(Node(v))
    }
    pub fn get(self) -> u32 {
        self.0
    }
    /// Steps from the root (the root is at depth 0).
    pub fn depth(self) -> u8 {
        (31 - self.0.leading_zeros()) as u8
    }
    pub fn left(self) -> Node {
        Node(self.0 << 1)
    }
    pub fn right(self) -> Node {
        Node((self.0 << 1) | 1)
    }
    pub fn sibling(self) -> Node {
        Node(self.0 ^ 1)
    }
    /// Its ancestor at `depth` (itself at its own depth); `None` if deeper.
    pub fn ancestor_at(self, depth: u8) -> Option<Node> {
        let own = self.depth();
        (depth <= own).then(|| Node(self.0 >> (own - depth)))
    }
    /// Whether `self` is `other` or one of its ancestors.
    pub fn is_ancestor_or_self(self, other: Node) -> bool {
        other.ancestor_at(self.depth()) == Some(self)
    }
}

/// Where a card sits: which tree, and which leaf of it (0-based, left to
/// right; the leaf's node is `2^d + leaf`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CardAddress {
    pub tree: u32,
    pub leaf: u32,
}

/// The shape of the forest: every tree has the same depth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Forest {
    depth: u8,
}

impl Default for Forest {
    fn default() -> Self {
        Forest {
            depth: DEFAULT_DEPTH,
        }
    }
}

impl Forest {
    pub fn new(depth: u8) -> Result<Forest, SdError> {
        if (1..=MAX_DEPTH).contains(&depth) {
            Ok(Forest { depth })
        } else {
            Err(SdError::Depth(depth))
        }
    }
    pub fn depth(self) -> u8 {
        self.depth
    }
    pub fn leaves_per_tree(self) -> u64 {
        1 << self.depth
    }
    /// Labels a card holds, `d(d+1)/2`, not counting the whole-tree key.
    pub fn label_count(self) -> usize {
        let d = self.depth as usize;
        d * (d + 1) / 2
    }
    /// Entries a card stores: its labels and then the whole-tree key.
    pub fn card_entries(self) -> usize {
        self.label_count() + 1
    }
    /// Trees needed for `assigned` cards numbered from 0.
    pub fn trees_for(self, assigned: u64) -> u64 {
        assigned.div_ceil(self.leaves_per_tree())
    }
    /// The address of card number `n` (cards are numbered from 0 in the
    /// order they are given leaves).
    pub fn address(self, n: u64) -> Result<CardAddress, SdError> {
        let tree = n >> self.depth;
        if tree >= u64::from(MAX_TREES) {
            return Err(SdError::CardNumber(n));
        }
        Ok(CardAddress {
            tree: tree as u32,
            leaf: (n & (self.leaves_per_tree() - 1)) as u32,
        })
    }
    /// The card number of an address (the inverse of [`Forest::address`]).
    pub fn card_number(self, a: CardAddress) -> u64 {
        (u64::from(a.tree) << self.depth) | u64::from(a.leaf)
    }
    /// Whether the address fits this forest.
    pub fn check(self, a: CardAddress) -> Result<(), SdError> {
        if a.tree < MAX_TREES && u64::from(a.leaf) < self.leaves_per_tree() {
            Ok(())
        } else {
            Err(SdError::Address {
                tree: a.tree,
                leaf: a.leaf,
                depth: self.depth,
            })
        }
    }
    /// The leaf's node.
    pub fn leaf_node(self, leaf: u32) -> Node {
        Node((1u32 << self.depth) | leaf)
    }
    /// Where a card keeps `LABEL(i, k)` for its ancestor `i` at depth `a`
    /// and `k` the sibling of its ancestor at depth `b` (`a < b ≤ d`):
    /// entries are ordered by `a`, then `b`.
    pub fn label_index(self, a: u8, b: u8) -> usize {
        let (a, b, d) = (a as usize, b as usize, self.depth as usize);
        a * d - a * a.saturating_sub(1) / 2 + (b - a - 1)
    }
    /// Where a card keeps its tree's "nobody excluded" key.
    pub fn whole_index(self) -> usize {
        self.label_count()
    }
}

/// One subset of a cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subset {
    /// Every leaf of the tree: nobody in it is excluded.
    Whole { tree: u32 },
    /// `S(i, j)`: the leaves under `i` but not under `j`, a proper
    /// descendant of `i`.
    Difference { tree: u32, i: Node, j: Node },
}

impl Subset {
    pub fn tree(&self) -> u32 {
        match *self {
            Subset::Whole { tree } | Subset::Difference { tree, .. } => tree,
        }
    }

    /// The 8 bytes on the air: `tree:u24 ‖ i_depth:u8 ‖ j:u32`, `i` being
    /// `j`'s ancestor at `i_depth`; a whole tree is `i_depth = FF`, `j = 1`.
    pub fn to_id(&self) -> [u8; SUBSET_ID_LEN] {
        let (tree, i_depth, j) = match *self {
            Subset::Whole { tree } => (tree, 0xFF, 1),
            Subset::Difference { tree, i, j } => (tree, i.depth(), j.get()),
        };
        let mut id = [0u8; SUBSET_ID_LEN];
        id[..4].copy_from_slice(&(tree << 8).to_be_bytes());
        id[3] = i_depth;
        id[4..].copy_from_slice(&j.to_be_bytes());
        id
    }

    /// Parses an id. Refuses `j` = 0, `j` deeper than [`MAX_DEPTH`], `i`
    /// not strictly above `j`, and any whole-tree id but `FF`, `1`.
    pub fn from_id(id: &[u8; SUBSET_ID_LEN]) -> Result<Subset, InvalidMessage> {
        let tree = u32::from_be_bytes([0, id[0], id[1], id[2]]);
        let i_depth = id[3];
        let j = u32::from_be_bytes([id[4], id[5], id[6], id[7]]);
        if i_depth == 0xFF {
            return if j == 1 {
                Ok(Subset::Whole { tree })
            } else {
                Err(InvalidMessage::InvalidValue("whole-tree subset id"))
            };
        }
        let j = Node::new(j).ok_or(InvalidMessage::InvalidValue("subset node j"))?;
        let i = j
            .ancestor_at(i_depth)
            .filter(|i| *i != j)
            .ok_or(InvalidMessage::InvalidValue("subset node i"))?;
        Ok(Subset::Difference { tree, i, j })
    }

    /// Whether the card at `a` is in this subset (bit arithmetic; what the
    /// card does to find its subset).
    pub fn covers(&self, forest: Forest, a: CardAddress) -> bool {
        if forest.check(a).is_err() || self.tree() != a.tree {
            return false;
        }
        match *self {
            Subset::Whole { .. } => true,
            Subset::Difference { i, j, .. } => {
                let u = forest.leaf_node(a.leaf);
                j.depth() <= forest.depth() && i.is_ancestor_or_self(u) && !j.is_ancestor_or_self(u)
            }
        }
    }
}

// ------------------------------------------------------------------- PRG

fn prg(x: &[u8; 32], info: &[u8]) -> [u8; 32] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, x);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(&[KDF_VERSION]);
    ctx.update(info);
    ctx.update(&[0x01]);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// `G_L(x)`: one step down to the left child.
pub fn prg_left(x: &SdLabel) -> SdLabel {
    SdLabel::from_bytes(prg(x.expose(), INFO_L))
}
/// `G_R(x)`: one step down to the right child.
pub fn prg_right(x: &SdLabel) -> SdLabel {
    SdLabel::from_bytes(prg(x.expose(), INFO_R))
}
/// `G_M(x)`: the subset key of a label.
pub fn prg_middle(x: &SdLabel) -> SubsetKey {
    SubsetKey::from_bytes(prg(x.expose(), INFO_M))
}

/// `LABEL(i, j)` from `LABEL(i, k)` for `k` an ancestor of `j` (or `j`):
/// one PRG call per level between them.
pub fn walk_down(from: &SdLabel, k: Node, j: Node) -> SdLabel {
    let steps = j.depth() - k.depth();
    let mut x = from.clone();
    for s in (0..steps).rev() {
        x = if (j.get() >> s) & 1 == 0 {
            prg_left(&x)
        } else {
            prg_right(&x)
        };
    }
    x
}

// ---------------------------------------------------------------- headend

/// The headend's side: every label of every tree, derived on demand from
/// one master secret, so that 10 M cards need no per-node storage.
#[derive(Clone)]
pub struct SdAuthority {
    forest: Forest,
    master: SdMaster,
}

impl std::fmt::Debug for SdAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SdAuthority")
            .field("forest", &self.forest)
            .field("master", &"REDACTED")
            .finish()
    }
}

impl SdAuthority {
    pub fn new(forest: Forest, master: SdMaster) -> Self {
        SdAuthority { forest, master }
    }
    pub fn forest(&self) -> Forest {
        self.forest
    }

    /// `LABEL(i)`, the seed of node `i` of `tree`:
    /// `HKDF(salt = "iodoform/v1/sd-label", IKM = master,
    ///       info = 01 ‖ depth:u8 ‖ tree:u32 ‖ node:u32)`.
    pub fn node_label(&self, tree: u32, i: Node) -> SdLabel {
        let mut info = [0u8; 10];
        info[0] = KDF_VERSION;
        info[1] = self.forest.depth;
        info[2..6].copy_from_slice(&tree.to_be_bytes());
        info[6..10].copy_from_slice(&i.get().to_be_bytes());
        SdLabel::from_bytes(hkdf32(LABEL_SALT, self.master.expose(), &[&info]))
    }

    /// The "nobody excluded" key of `tree`:
    /// `HKDF(salt = "iodoform/v1/sd-whole", IKM = master,
    ///       info = 01 ‖ depth:u8 ‖ tree:u32)`.
    pub fn whole_key(&self, tree: u32) -> SubsetKey {
        let mut info = [0u8; 6];
        info[0] = KDF_VERSION;
        info[1] = self.forest.depth;
        info[2..6].copy_from_slice(&tree.to_be_bytes());
        SubsetKey::from_bytes(hkdf32(WHOLE_SALT, self.master.expose(), &[&info]))
    }

    /// The key of a subset: at most `d` PRG steps and one `G_M`.
    pub fn subset_key(&self, s: &Subset) -> SubsetKey {
        match *s {
            Subset::Whole { tree } => self.whole_key(tree),
            Subset::Difference { tree, i, j } => {
                prg_middle(&walk_down(&self.node_label(tree, i), i, j))
            }
        }
    }

    /// Everything a card at `a` stores: `LABEL(i, k)` for each ancestor
    /// `i` of its leaf and each `k` hanging off the path below `i`, in
    /// [`Forest::label_index`] order, then the whole-tree key.
    pub fn card_labels(&self, a: CardAddress) -> Result<CardLabels, SdError> {
        let f = self.forest;
        f.check(a)?;
        let u = f.leaf_node(a.leaf);
        let d = f.depth;
        let mut labels = Vec::with_capacity(f.card_entries());
        for da in 0..d {
            let i = u.ancestor_at(da).unwrap_or(Node::ROOT);
            // Walk down u's path from i; at each level take the sibling.
            let mut on_path = self.node_label(a.tree, i);
            for db in da + 1..=d {
                let x = u.ancestor_at(db).unwrap_or(u);
                let (to_x, to_sibling) = if x.get() & 1 == 0 {
                    (prg_left(&on_path), prg_right(&on_path))
                } else {
                    (prg_right(&on_path), prg_left(&on_path))
                };
                labels.push(to_sibling);
                on_path = to_x;
            }
        }
        labels.push(SdLabel::from_bytes(*self.whole_key(a.tree).expose()));
        CardLabels::new(f, a, labels)
    }
}

/// A card's labels: its address, the `d(d+1)/2` labels and the whole-tree
/// key, as delivered in its SD_LABELS commands.
#[derive(Clone, PartialEq, Eq)]
pub struct CardLabels {
    forest: Forest,
    address: CardAddress,
    entries: Vec<SdLabel>,
}

impl std::fmt::Debug for CardLabels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CardLabels")
            .field("forest", &self.forest)
            .field("address", &self.address)
            .field("entries", &self.entries.len())
            .finish()
    }
}

impl CardLabels {
    pub fn new(
        forest: Forest,
        address: CardAddress,
        entries: Vec<SdLabel>,
    ) -> Result<Self, SdError> {
        forest.check(address)?;
        if entries.len() != forest.card_entries() {
            return Err(SdError::LabelCount {
                got: entries.len(),
                want: forest.card_entries(),
                depth: forest.depth,
            });
        }
        Ok(CardLabels {
            forest,
            address,
            entries,
        })
    }
    pub fn forest(&self) -> Forest {
        self.forest
    }
    pub fn address(&self) -> CardAddress {
        self.address
    }
    /// The entries in storage order (labels, then the whole-tree key).
    pub fn entries(&self) -> &[SdLabel] {
        &self.entries
    }
    /// The key of `s` if this card is in it, else `None`.
    pub fn subset_key(&self, s: &Subset) -> Option<SubsetKey> {
        derive_subset_key(self.forest, self.address, s, |n| self.entries.get(n))
    }
    /// The first subset of `subsets` this card is in, with its key.
    pub fn find<'s>(
        &self,
        subsets: impl IntoIterator<Item = &'s Subset>,
    ) -> Option<(usize, SubsetKey)> {
        find_and_derive(self.forest, self.address, subsets, |n| self.entries.get(n))
    }
}

// ------------------------------------------------------------------- card

/// The card's derivation: if the card at `a` is in `s`, its key, from the
/// one stored entry it needs (`entry(index)`), in at most `d` PRG calls.
/// `None` if the card is not in `s` or lacks the entry.
pub fn derive_subset_key<'l>(
    forest: Forest,
    a: CardAddress,
    s: &Subset,
    entry: impl Fn(usize) -> Option<&'l SdLabel>,
) -> Option<SubsetKey> {
    if !s.covers(forest, a) {
        return None;
    }
    match *s {
        Subset::Whole { .. } => {
            entry(forest.whole_index()).map(|k| SubsetKey::from_bytes(*k.expose()))
        }
        Subset::Difference { i, j, .. } => {
            let u = forest.leaf_node(a.leaf);
            // m: the lowest common ancestor of u and j, at depth c; k: its
            // child on j's side, the sibling of u's ancestor at c + 1.
            let diff = u.ancestor_at(j.depth())?.get() ^ j.get();
            let c = j.depth() - (32 - diff.leading_zeros()) as u8;
            let k = j.ancestor_at(c + 1)?;
            let held = entry(forest.label_index(i.depth(), c + 1))?;
            Some(prg_middle(&walk_down(held, k, j)))
        }
    }
}

/// Finds the card's subset among `subsets` and derives its key.
pub fn find_and_derive<'s, 'l>(
    forest: Forest,
    a: CardAddress,
    subsets: impl IntoIterator<Item = &'s Subset>,
    entry: impl Fn(usize) -> Option<&'l SdLabel>,
) -> Option<(usize, SubsetKey)> {
    let (n, s) = subsets
        .into_iter()
        .enumerate()
        .find(|(_, s)| s.covers(forest, a))?;
    derive_subset_key(forest, a, s, entry).map(|k| (n, k))
}

// ------------------------------------------------------------------ cover

/// The cover of every assigned card but the excluded ones: card numbers
/// `0..assigned` are assigned, the leaves after them count as excluded,
/// and `excluded` lists card numbers in any order (duplicates and numbers
/// past `assigned` are ignored). Visits only subtrees with an excluded
/// leaf: O(r·d) for r exclusions, plus O(d) for the unassigned range and
/// one [`Subset::Whole`] per tree without exclusions. Within one tree with
/// r excluded leaves (unassigned ones included) it emits at most 2r − 1
/// subsets, and no subset at all for a tree whose leaves are all excluded.
pub fn cover(forest: Forest, assigned: u64, excluded: &[u64]) -> Vec<Subset> {
    let mut ex: Vec<u64> = excluded.iter().copied().filter(|n| *n < assigned).collect();
    ex.sort_unstable();
    ex.dedup();
    let per = forest.leaves_per_tree();
    let trees = forest.trees_for(assigned).min(u64::from(MAX_TREES));
    let mut out = Vec::with_capacity(ex.len() * 5 / 4 + trees as usize + forest.depth as usize);
    let mut rest = &ex[..];
    let mut leaves = Vec::new();
    for t in 0..trees {
        let end = rest.partition_point(|n| *n < (t + 1) * per);
        leaves.clear();
        leaves.extend(rest[..end].iter().map(|n| (n - t * per) as u32));
        rest = &rest[end..];
        let unassigned_from = (assigned - t * per).min(per);
        cover_tree(forest, t as u32, &leaves, unassigned_from, &mut out);
    }
    out
}

/// The cover of one tree: `excluded` are sorted leaf indices, and every
/// leaf from `unassigned_from` on is excluded too.
pub fn cover_tree(
    forest: Forest,
    tree: u32,
    excluded: &[u32],
    unassigned_from: u64,
    out: &mut Vec<Subset>,
) {
    let walk = Walk {
        tree,
        unassigned_from,
    };
    match walk.node(Node::ROOT, 0, forest.leaves_per_tree(), excluded, out) {
        None => out.push(Subset::Whole { tree }),
        Some(t) if t != Node::ROOT => out.push(Subset::Difference {
            tree,
            i: Node::ROOT,
            j: t,
        }),
        Some(_) => {}
    }
}

struct Walk {
    tree: u32,
    unassigned_from: u64,
}

impl Walk {
    /// `None` is clean (no excluded leaf under `v`); `Some(t)` is top(t):
    /// every leaf under `v` but not under `t` is clean and not yet covered.
    fn node(
        &self,
        v: Node,
        lo: u64,
        span: u64,
        excluded: &[u32],
        out: &mut Vec<Subset>,
    ) -> Option<Node> {
        if lo >= self.unassigned_from {
            return Some(v);
        }
        if excluded.is_empty() && lo + span <= self.unassigned_from {
            return None;
        }
        if span == 1 {
            return Some(v);
        }
        let half = span / 2;
        let split = excluded.partition_point(|x| u64::from(*x) < lo + half);
        let (l, r) = (v.left(), v.right());
        let a = self.node(l, lo, half, &excluded[..split], out);
        let b = self.node(r, lo + half, half, &excluded[split..], out);
        match (a, b) {
            (None, None) => None,
            (Some(t), None) | (None, Some(t)) => Some(t),
            (Some(tl), Some(tr)) => {
                if tl != l {
                    out.push(Subset::Difference {
                        tree: self.tree,
                        i: l,
                        j: tl,
                    });
                }
                if tr != r {
                    out.push(Subset::Difference {
                        tree: self.tree,
                        i: r,
                        j: tr,
                    });
                }
                Some(v)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_index_is_dense_and_ordered() {
        for d in 1..=MAX_DEPTH {
            let f = Forest::new(d).unwrap();
            let mut n = 0;
            for a in 0..d {
                for b in a + 1..=d {
                    assert_eq!(f.label_index(a, b), n, "d {d} a {a} b {b}");
                    n += 1;
                }
            }
            assert_eq!(n, f.label_count());
        }
        assert!(Forest::new(0).is_err() && Forest::new(MAX_DEPTH + 1).is_err());
    }

    #[test]
    fn subset_ids_round_trip_and_refuse_nonsense() {
        let j = Node::new(0b1011_0110).unwrap();
        for s in [
            Subset::Whole { tree: 0xABCDEF },
            Subset::Difference {
                tree: 3,
                i: j.ancestor_at(2).unwrap(),
                j,
            },
        ] {
            assert_eq!(Subset::from_id(&s.to_id()).unwrap(), s);
        }
        for bad in [
            [0, 0, 0, 0xFF, 0, 0, 0, 2],
            [0, 0, 0, 1, 0, 0, 0, 0],
            [0, 0, 0, 1, 0, 0, 0, 3],
            [0, 0, 0, 0, 0x02, 0, 0, 0],
        ] {
            assert!(Subset::from_id(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn debug_hides_the_master_and_labels() {
        let a = SdAuthority::new(Forest::new(3).unwrap(), SdMaster::from_bytes([7; 32]));
        assert!(!format!("{a:?}").contains("7, 7"));
        let l = a.card_labels(CardAddress { tree: 0, leaf: 5 }).unwrap();
        let debug = format!("{l:?}");
        assert!(
            debug.contains("entries: 7") && !debug.contains('['),
            "{debug}"
        );
    }
}
