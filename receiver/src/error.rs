//! Why the receiver stops, each with a one-line message and its own exit
//! code, so that scripts can tell a missing card from a missing
//! entitlement.

use crate::card::LinkError;
use crate::identity::IdentityError;
use std::io;
use thiserror::Error;

/// Exit codes of the `receiver` binary: the one table of every Iodoform
/// tool ([`cli::exit`]), under the receiver's names.
pub mod exit {
    pub use cli::exit::{
        FAILURE as OTHER, IO, NOT_ENTITLED, NOT_TS, NO_CARD, OK, PAIRED_ELSEWHERE, UNKNOWN_SERVICE,
        USAGE,
    };
    /// The receiver's key file is missing or unreadable.
    pub const IDENTITY: u8 = cli::exit::NO_INPUT;
    /// The receiver's key file is readable by other users.
    pub const IDENTITY_TOO_OPEN: u8 = cli::exit::NO_PERMISSION;
}

/// Why the receiver stopped.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Failure {
    /// The card refused the ECMs; the message says why in the user's terms.
    #[error("{0}")]
    NotEntitled(String),
    #[error(transparent)]
    Card(#[from] LinkError),
    #[error("service {service} is not in the stream ({})", list_services(.available))]
    UnknownService { service: u16, available: Vec<u16> },
    #[error("service {service} is scrambled by another CA system ({}), not Iodoform (0x{:04X})", list_ca(.ca_system_ids), ts::psi::CA_SYSTEM_ID)]
    ForeignCa {
        service: u16,
        ca_system_ids: Vec<u16>,
    },
    #[error("service {service} is not scrambled (its PMT has no CA_descriptor): nothing to descramble; play the input directly")]
    NotScrambled { service: u16 },
    #[error("input is not an MPEG transport stream: {0}")]
    NotTs(String),
    #[error("input {what}: {source}")]
    Input {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("output {what}: {source}")]
    Output {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

fn list_services(s: &[u16]) -> String {
    match s {
        [] => "it lists no services".into(),
        [one] => format!("it has service {one}"),
        _ => {
            let v: Vec<String> = s.iter().map(u16::to_string).collect();
            format!("it has services {}", v.join(", "))
        }
    }
}

fn list_ca(ids: &[u16]) -> String {
    let v: Vec<String> = ids.iter().map(|i| format!("0x{i:04X}")).collect();
    v.join(", ")
}

impl Failure {
    /// The process exit code for this failure (see [`exit`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::NotEntitled(_) => exit::NOT_ENTITLED,
            Failure::Card(LinkError::PairedElsewhere { .. }) => exit::PAIRED_ELSEWHERE,
            Failure::Card(_) => exit::NO_CARD,
            Failure::UnknownService { .. }
            | Failure::ForeignCa { .. }
            | Failure::NotScrambled { .. } => exit::UNKNOWN_SERVICE,
            Failure::NotTs(_) => exit::NOT_TS,
            Failure::Input { .. } | Failure::Output { .. } => exit::IO,
            Failure::Identity(IdentityError::TooOpen { .. }) => exit::IDENTITY_TOO_OPEN,
            Failure::Identity(_) => exit::IDENTITY,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line() {
        let f = Failure::UnknownService {
            service: 5,
            available: vec![1, 2],
        };
        assert_eq!(
            f.to_string(),
            "service 5 is not in the stream (it has services 1, 2)"
        );
        assert_eq!(f.exit_code(), exit::UNKNOWN_SERVICE);
        let f = Failure::Card(LinkError::PairedElsewhere {
            card_id: 42,
            receiver: [0xAB; 32],
        });
        assert_eq!(
            f.to_string(),
            format!(
                "card 42 is paired with another receiver: the operator must run \
                 \"headend pair 42 {}\" (this receiver's key) or \"headend unpair 42\"",
                "ab".repeat(32)
            )
        );
        assert_eq!(f.exit_code(), exit::PAIRED_ELSEWHERE);
        let f = Failure::ForeignCa {
            service: 1,
            ca_system_ids: vec![0x0B00],
        };
        assert_eq!(
            f.to_string(),
            "service 1 is scrambled by another CA system (0x0B00), not Iodoform (0xF10D)"
        );
    }
}
