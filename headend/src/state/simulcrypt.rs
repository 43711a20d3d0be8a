//! What the SimulCrypt ECMG ([`crate::simulcrypt::ecmg`]) takes from the
//! daemon's state: the products of the `scrambler = "simulcrypt"`
//! channels, their active keys (so its ECMs follow renewals exactly as the
//! own multiplexer's do), the clock check, and blocks of epochs committed
//! before use.

use super::seq::new_seq_block;
use super::{Headend, Result, StateError};
use api::NewProduct;
use proto::secret::ProductKey;

impl Headend {
    /// The id of the product of this name, made (as a config channel's
    /// product is) if it does not exist yet.
    pub fn ensure_product(&mut self, name: &str, now_ms: u64) -> Result<u32> {
        if let Some(p) = self.products.values().find(|p| p.name == name) {
            return Ok(p.id);
        }
        let p = self
            .add_product(
                NewProduct {
                    name: name.to_string(),
                    id: None,
                },
                now_ms,
            )
            .map_err(|e| StateError::Config {
                field: format!("channels.product ({name:?})"),
                message: e.to_string(),
            })?;
        Ok(p.id)
    }

    /// The generation ECMs of `product` are sealed under now, and its key;
    /// `None` for an unknown product.
    pub fn active_product_key(&self, product: u32) -> Option<(u32, ProductKey)> {
        let p = self.products.get(&product)?;
        let (generation, key) = self.engine.product_key(product).ok()?;
        // The stored state and the engine switch together; if they ever
        // disagreed, no key is better than the wrong one.
        (generation == p.active_generation).then(|| (generation, key.clone()))
    }

    /// Commits a new block of the sequence chain (the EMM sequence blocks'
    /// table, `seq`) and returns its floor: `[floor, floor + 2^20)` is then
    /// this caller's alone, in this run and every later one, and above
    /// every earlier block and `now_ms << 20`. The ECMG cuts its epochs from
    /// such blocks. The EMM counters never enter it: they stay in their own
    /// block, and their next block starts above this one.
    ///
    /// `None` (ask again a millisecond later) while the newest block was
    /// made in this millisecond: every block then starts at `now_ms << 20`
    /// or below it, which is what keeps a database restored from a backup
    /// clear of the blocks made after the backup (see `seq`).
    pub fn reserve_block(&mut self, now_ms: u64) -> Result<Option<u64>> {
        if crate::store::runs::last_seq_floor(&self.conn)? >> super::BLOCK_SHIFT >= now_ms {
            return Ok(None);
        }
        new_seq_block(&mut self.conn, self.run, now_ms).map(Some)
    }
}
