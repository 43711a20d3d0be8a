//! Channels: those of headend.toml, written again at every start, and
//! those added, changed and removed through the API. Every channel passes
//! the shared channel checks ([`crate::config::check_channel`]) against
//! every other before it is stored.

use super::fields::check_name;
use super::{Clash, Headend, Result, StateError, Unknown};
use crate::config::{ChannelConfig, ChannelSpec};
use crate::store;
use api::{Channel, ChannelOrigin, ChannelRef, ChannelUpdate, NewChannel, NewProduct};
use std::path::Path;

impl Headend {
    pub(super) fn load_channels(&mut self) -> Result<()> {
        self.channels = store::channels::all(&self.conn)?
            .into_iter()
            .map(|c| (c.service_id, c))
            .collect();
        Ok(())
    }

    /// Channels named in the config are created, or updated to match it;
    /// products they name are created if missing. A channel that an
    /// earlier start took from the config and that the config no longer
    /// has is removed: the file is where such a channel is changed.
    pub(super) fn sync_config_channels(
        &mut self,
        channels: &[ChannelConfig],
        now_ms: u64,
    ) -> Result<()> {
        let dropped: Vec<(u16, String)> = store::channels::from_config(&self.conn)?
            .into_iter()
            .filter(|(s, _)| !channels.iter().any(|c| c.service_id == *s))
            .collect();
        for (service, name) in dropped {
            store::channels::delete(&self.conn, service)?;
            tracing::info!(service, %name, "channel removed: headend.toml no longer has it");
        }
        for c in channels {
            let product = match self.products.values().find(|p| p.name == c.product) {
                Some(p) => p.id,
                None => {
                    self.add_product(
                        NewProduct {
                            name: c.product.clone(),
                            id: None,
                        },
                        now_ms,
                    )
                    .map_err(|e| StateError::Config {
                        field: format!("channels.product ({:?})", c.product),
                        message: e.to_string(),
                    })?
                    .id
                }
            };
            if let Some(other) = store::channels::other_named(&self.conn, &c.name, c.service_id)? {
                return Err(StateError::Config {
                    field: format!("channels.name ({:?})", c.name),
                    message: format!(
                        "the database already has a channel of this name, for service {other} \
                         (added through the API): give this one another name, or start without \
                         it and rename the other (`headend channel update {other} --name ...`)"
                    ),
                });
            }
            store::channels::upsert_from_config(&self.conn, c, product, now_ms)?;
        }
        Ok(())
    }

    /// Where relative channel file paths are taken from: the config's
    /// folder (the default is the working directory).
    pub fn set_channel_base(&mut self, dir: &Path) {
        self.channel_base = dir.to_path_buf();
    }

    pub fn channel_base(&self) -> &Path {
        &self.channel_base
    }

    /// The shared channel checks ([`crate::config::check_channel`]),
    /// against every other channel: the refusals of the API.
    fn check_channel(&self, c: &Channel) -> Result<()> {
        check_name(&c.name, "name")?;
        let others: Vec<ChannelSpec<'_>> = self
            .channels
            .values()
            .filter(|o| o.service_id != c.service_id)
            .map(ChannelSpec::of)
            .collect();
        crate::config::check_channel(&ChannelSpec::of(c), &others, &self.channel_base)
            .map_err(StateError::channel)
    }

    fn find_channel(&self, r: &ChannelRef) -> Result<&Channel> {
        match r {
            ChannelRef::Service(s) => self.channels.get(s),
            ChannelRef::Name(n) => self.channels.values().find(|c| &c.name == n),
        }
        .ok_or_else(|| Unknown::Channel(r.clone()).into())
    }

    /// One channel, by service id or name.
    pub fn channel(&self, r: &ChannelRef) -> Result<Channel> {
        self.find_channel(r).cloned()
    }

    pub fn channels(&self) -> Vec<Channel> {
        self.channels.values().cloned().collect()
    }

    pub fn add_channel(&mut self, req: NewChannel, now_ms: u64) -> Result<Channel> {
        check_name(&req.name, "name")?;
        let product = self.resolve_product(&req.product)?.id;
        if self.channels.contains_key(&req.service_id) {
            return Err(Clash::ServiceTaken(req.service_id).into());
        }
        if self.channels.values().any(|c| c.name == req.name) {
            return Err(Clash::ChannelName(req.name).into());
        }
        let c = Channel {
            service_id: req.service_id,
            name: req.name,
            product,
            ecm_pid: req.ecm_pid,
            emm_pid: req.emm_pid,
            maturity: req.maturity,
            input: req.input,
            output: req.output,
            clear_services: req.clear_services,
            origin: ChannelOrigin::Api,
        };
        self.check_channel(&c)?;
        store::channels::insert(&self.conn, &c, now_ms)?;
        self.channels.insert(c.service_id, c.clone());
        tracing::info!(service = c.service_id, name = %c.name, product, "channel created");
        Ok(c)
    }

    /// A channel from headend.toml is changed there, not through the API:
    /// the next start would undo the change.
    fn refuse_config_channel(c: &Channel, action: &'static str) -> Result<()> {
        if c.origin == ChannelOrigin::Config {
            return Err(Clash::ConfigChannel {
                name: c.name.clone(),
                action,
            }
            .into());
        }
        Ok(())
    }

    /// Changes a channel; the stream follows within a second (the
    /// supervisor restarts it if its stream settings changed).
    pub fn update_channel(&mut self, r: &ChannelRef, req: ChannelUpdate) -> Result<Channel> {
        let old = self.find_channel(r)?.clone();
        Self::refuse_config_channel(&old, "change")?;
        if let Some(s) = req.service_id {
            if s != old.service_id {
                return Err(StateError::invalid(
                    "service_id",
                    format!(
                        "a channel's service id cannot change ({} to {s}): remove the channel and add it again",
                        old.service_id
                    ),
                ));
            }
        }
        let mut c = old.clone();
        if let Some(n) = req.name {
            check_name(&n, "name")?;
            if n != old.name && self.channels.values().any(|o| o.name == n) {
                return Err(Clash::ChannelName(n).into());
            }
            c.name = n;
        }
        if let Some(p) = &req.product {
            c.product = self.resolve_product(p)?.id;
        }
        // An absent field stays as it is; `input` and `output` may be
        // given as null, which takes them away.
        c.ecm_pid = req.ecm_pid.unwrap_or(c.ecm_pid);
        c.emm_pid = req.emm_pid.unwrap_or(c.emm_pid);
        c.maturity = req.maturity.unwrap_or(c.maturity);
        c.input = req.input.unwrap_or(c.input);
        c.output = req.output.unwrap_or(c.output);
        c.clear_services = req.clear_services.unwrap_or(c.clear_services);
        self.check_channel(&c)?;
        store::channels::update(&self.conn, &c)?;
        self.channels.insert(c.service_id, c.clone());
        tracing::info!(
            service = c.service_id,
            name = %c.name,
            product = c.product,
            ecm_pid = c.ecm_pid,
            emm_pid = c.emm_pid,
            input = c.input.as_deref().unwrap_or("-"),
            output = c.output.as_deref().unwrap_or("-"),
            "channel updated"
        );
        // A new ECM PID or product goes into the ECM at the scheduler's
        // next step, or before the stream starts again (the supervisor
        // calls `publish_ecms`).
        Ok(c)
    }

    /// Removes a channel: its ECMs stop at once, and the supervisor stops
    /// its stream within a second. Its epochs stay recorded, so that the
    /// service, added again, never goes back to an old crypto period.
    pub fn remove_channel(&mut self, r: &ChannelRef) -> Result<Channel> {
        let c = self.find_channel(r)?.clone();
        Self::refuse_config_channel(&c, "remove")?;
        store::channels::delete(&self.conn, c.service_id)?;
        self.channels.remove(&c.service_id);
        self.output.remove_ecm(c.service_id);
        tracing::info!(service = c.service_id, name = %c.name, "channel removed");
        Ok(c)
    }
}
