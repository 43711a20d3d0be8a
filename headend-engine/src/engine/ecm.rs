//! ECMs: sealed under the product's epoch key, the same bytes for the
//! same header and content, never an older epoch again.

use super::*;

impl KeyEngine {
    /// The ECM of `service` for `epoch`, sealed under the product's
    /// current key generation.
    pub fn ecm(
        &mut self,
        product: u32,
        epoch: u64,
        service: u16,
        cws: &CwPair,
        time: u64,
        maturity: u8,
    ) -> Result<Ecm, EngineError> {
        let generation = self.product_generation(product)?;
        let header = EcmHeader {
            product,
            generation,
            epoch,
            service,
        };
        self.seal_ecm(header, cws, time, maturity)
    }

    /// An ECM for an explicit header, whose generation may be the current
    /// or the previous one (while cards still receive the new key).
    /// Sealing the same header again returns the same bytes if the
    /// content is the same, and fails if it is not or if the epoch is
    /// older than one already sealed for this product, generation and
    /// service: either would reuse a nonce.
    pub fn seal_ecm(
        &mut self,
        header: EcmHeader,
        cws: &CwPair,
        time: u64,
        maturity: u8,
    ) -> Result<Ecm, EngineError> {
        let EcmHeader {
            product,
            generation,
            epoch,
            service,
        } = header;
        let key = self.key_of(product, generation)?;
        let payload = EcmPayload {
            cws: cws.clone(),
            time,
            maturity,
        };
        let slot = (product, generation, service);
        if let Some(last) = self.ecms.get(&slot) {
            if epoch < last.epoch {
                return Err(EngineError::EcmEpochRegressed {
                    product,
                    service,
                    epoch,
                    last: last.epoch,
                });
            }
            if epoch == last.epoch {
                return if last.payload == payload {
                    Ok(last.ecm.clone())
                } else {
                    Err(EngineError::EcmResealed {
                        product,
                        service,
                        epoch,
                    })
                };
            }
        }
        let ecm_key = key.epoch_key(product, generation, epoch).ecm_key();
        let ecm = Ecm::seal(&ecm_key, header, &payload);
        self.ecms.insert(
            slot,
            SealedEcm {
                epoch,
                payload,
                ecm: ecm.clone(),
            },
        );
        Ok(ecm)
    }
}
