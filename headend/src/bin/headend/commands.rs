//! The client subcommands: each one request to the admin API, its body
//! one of the [`api`] crate's types, and its answer printed as a table or
//! as JSON.

use crate::args::{CardCmd, ChannelCmd, ClockCmd, Command, ProductCmd};
use crate::view::{typed, View};
use api::{
    path, ChannelRemoved, ChannelUpdate, NewCard, NewChannel, NewPairing, NewProduct,
    NewSubscription, ProductRef, RotateRequest,
};
use headend::client::{config_path, Client, ClientError};
use serde_json::Value;
use std::path::PathBuf;

/// Sends the request of one client subcommand and prints the answer.
pub(crate) fn run(config: Option<PathBuf>, as_json: bool, cmd: Command) -> Result<(), ClientError> {
    let client = Client::from_config(&config_path(config.as_deref())?)?;
    let (value, view): (Value, View) = match cmd {
        Command::Product(ProductCmd::Add { name, id }) => (
            client.post(path::PRODUCTS, &NewProduct { name, id })?,
            View::Products,
        ),
        Command::Product(ProductCmd::List) => (client.get(path::PRODUCTS)?, View::Products),
        Command::Channel(ChannelCmd::Add(a)) => {
            let body = NewChannel {
                name: a.name,
                service_id: a.service_id,
                product: ProductRef::parse(&a.product),
                ecm_pid: a.ecm_pid,
                emm_pid: a.emm_pid,
                maturity: a.maturity,
                input: a.input,
                output: a.output,
                clear_services: a.clear_services,
            };
            (client.post(path::CHANNELS, &body)?, View::Channels)
        }
        Command::Channel(ChannelCmd::Update {
            channel,
            name,
            product,
            ecm_pid,
            emm_pid,
            maturity,
            input,
            no_input,
            output,
            no_output,
            clear_services,
            no_clear_services,
        }) => {
            // A flag that takes a field away sends it as null.
            let gone = |given: Option<String>, remove: bool| match given {
                Some(v) => Some(Some(v)),
                None => remove.then_some(None),
            };
            let body = ChannelUpdate {
                service_id: None,
                name,
                product: product.as_deref().map(ProductRef::parse),
                ecm_pid,
                emm_pid,
                maturity,
                input: gone(input, no_input),
                output: gone(output, no_output),
                clear_services: if !clear_services.is_empty() {
                    Some(clear_services)
                } else {
                    no_clear_services.then(Vec::new)
                },
            };
            if body.is_empty() {
                return Err(ClientError::Api {
                    status: 400,
                    message: "nothing to change: give at least one option (see `headend channel update --help`)".into(),
                });
            }
            (
                client.patch(
                    &format!("{}/{}", path::CHANNELS, urlencode(&channel)),
                    &body,
                )?,
                View::Channels,
            )
        }
        Command::Channel(ChannelCmd::Remove { channel }) => {
            let v = client.delete(&format!("{}/{}", path::CHANNELS, urlencode(&channel)))?;
            let r: ChannelRemoved = typed(&v)?;
            let msg = format!(
                "channel {} (service {}) removed; its stream and its ECMs have stopped",
                r.name, r.service_id
            );
            (v, View::Done(msg))
        }
        Command::Channel(ChannelCmd::List) => (client.get(path::CHANNELS)?, View::Channels),
        Command::Card(CardCmd::Add { from }) => {
            let text = std::fs::read_to_string(&from).map_err(|e| ClientError::Api {
                status: 400,
                message: format!("cannot read {}: {e}", from.display()),
            })?;
            let body: NewCard = serde_json::from_str(&text).map_err(|e| ClientError::Api {
                status: 400,
                message: format!(
                    "{} is not the card record `smartcard provision` writes \
                     ({{\"card_id\", \"public_key\", \"operator_id\"}}): {e}",
                    from.display()
                ),
            })?;
            (client.post(path::CARDS, &body)?, View::Card)
        }
        Command::Card(CardCmd::List { after, limit }) => (
            client.get(&format!("{}?after={after}&limit={limit}", path::CARDS))?,
            View::Cards,
        ),
        Command::Card(CardCmd::Show { card }) => {
            (client.get(&format!("{}/{card}", path::CARDS))?, View::Card)
        }
        Command::Card(CardCmd::Revoke { card }) => (
            client.post(
                &format!("{}/{card}/revoke", path::CARDS),
                &serde_json::Map::new(),
            )?,
            View::Card,
        ),
        Command::Subscribe {
            card,
            product,
            until,
            start,
        } => {
            let body = NewSubscription {
                card_id: card,
                product: ProductRef::parse(&product),
                until,
                start,
            };
            (client.post(path::SUBSCRIPTIONS, &body)?, View::Subscription)
        }
        Command::Unsubscribe { card, product } => (
            client.delete(&format!(
                "{}/{card}/{}",
                path::SUBSCRIPTIONS,
                urlencode(&product)
            ))?,
            View::Done(format!(
                "card {card} no longer has product {product}; its key is being renewed"
            )),
        ),
        Command::Pair { card, receiver_key } => (
            client.post(
                path::PAIRINGS,
                &NewPairing {
                    card_id: card,
                    receiver_key,
                },
            )?,
            View::Card,
        ),
        Command::Unpair { card } => (
            client.delete(&format!("{}/{card}", path::PAIRINGS))?,
            View::Card,
        ),
        Command::Rotate { product } => {
            let body = RotateRequest {
                product: product.as_deref().map(ProductRef::parse),
            };
            (client.post(path::ROTATE, &body)?, View::Rotated)
        }
        Command::Status => (client.get(path::STATUS)?, View::Status),
        Command::Clock(ClockCmd::Accept) => {
            let v = client.post(path::CLOCK_ACCEPT, &serde_json::Map::new())?;
            let a: api::ClockAccepted = typed(&v)?;
            let msg = format!(
                "clock jump of {} s accepted (from {} to {}); the headend seals with the new time",
                a.jump_secs, a.from, a.to
            );
            (v, View::Done(msg))
        }
        Command::Init(_) | Command::Run(_) | Command::Backup { .. } | Command::Restore { .. } => {
            unreachable!("handled in main")
        }
    };
    if as_json {
        cli::outln!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
    } else {
        view.print(&value)?;
    }
    Ok(())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
