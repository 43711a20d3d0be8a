//! Why the receiver stops, each with a one-line message and its own exit
//! code, so that scripts can tell a missing card from a missing
//! entitlement.

use crate::card::LinkError;
use crate::identity::IdentityError;
use std::io;
use thiserror::Error;

/// Exit codes of the `receiver` binary.
pub mod exit {
    /// Ran to the end of the input (or the output was closed).
    pub const OK: u8 = 0;
    /// Any other failure.
    pub const OTHER: u8 = 1;
    /// Bad command line (clap's own code).
    pub const USAGE: u8 = 2;
    /// The card refused the service's ECMs: no entitlement, outside its
    /// dates, or the product's current key has not reached the card.
    pub const NOT_ENTITLED: u8 = 3;
    /// No reader, no card within the timeout, or a card that cannot be used.
    pub const NO_CARD: u8 = 4;
    /// The card is paired with another receiver.
    pub const PAIRED_ELSEWHERE: u8 = 5;
    /// The service is not in the stream, or not scrambled by Iodoform.
    pub const UNKNOWN_SERVICE: u8 = 6;
    /// The input is not an MPEG transport stream, or carries no PSI.
    pub const NOT_TS: u8 = 7;
    /// Reading the input or writing the output failed.
    pub const IO: u8 = 8;
    /// The receiver's key file is missing, unreadable or unsafe.
    pub const IDENTITY: u8 = 9;
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
            Failure::UnknownService { .. } | Failure::ForeignCa { .. } => exit::UNKNOWN_SERVICE,
            Failure::NotTs(_) => exit::NOT_TS,
            Failure::Input { .. } | Failure::Output { .. } => exit::IO,
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
        let f = Failure::Card(LinkError::PairedElsewhere { card_id: 42 });
        assert_eq!(f.to_string(), "card 42 is paired with another receiver");
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
